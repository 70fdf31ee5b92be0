"""Write the shared settings of infra/k8s/settings/ray.yaml into the manifests of infra/k8s/.

    python infra/k8s/render.py                 # rewrite the generated parts of every manifest
    python infra/k8s/render.py --check         # exit 1 (with a diff) where a manifest is stale
    python infra/k8s/render.py --image gpu=REF --image cpu=REF
                                               # pin the images (infra/docker/build.sh does this)

A manifest holds two kinds of generated text, everything else in it is written by hand:

* sections: the lines between ``# BEGIN shared: <path>`` and ``# END shared: <path>`` are the
  value at <path> of the settings file (a mapping as its entries, a list as its items), at the
  markers' indentation;
* scalars: a line ``key: value  # shared: <path>`` gets the value at <path>.

So the RayCluster and the RayJob's cluster take their Ray version, authentication,
rayStartParams and Ray environment from one place, and the build script pins the image of
every manifest with one command. Needs PyYAML only.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

HERE = Path(__file__).resolve().parent
SETTINGS = HERE / "settings" / "ray.yaml"
FLAVORS = ("gpu", "cpu")

BEGIN = re.compile(r"^(?P<indent> *)# BEGIN shared: (?P<path>[\w.-]+)\s*$")
END = re.compile(r"^ *# END shared: (?P<path>[\w.-]+)\s*$")
SCALAR = re.compile(r"^(?P<head> *(?:- )?[\w.-]+: )(?P<value>\S+)(?P<tail> +# shared: (?P<path>[\w.-]+))\s*$")

# An image reference that names one build: a digest, or the tag infra/docker/build.sh gives
# (<version>-<12-hex git revision>[-dirty.<UTC time>]-<flavor>). "unbuilt" is the committed
# stand-in that exists in no registry.
PINNED_TAG = re.compile(r"\d+\.\d+\.\d+(?:[.+-][\w.]+)?-(?:[0-9a-f]{12}(?:-dirty\.\d{14})?|unbuilt)-(?P<flavor>gpu|cpu)")
IMAGE_REF = re.compile(r"(?P<repo>[a-z0-9][\w./:-]*?)(?::(?P<tag>[\w][\w.-]{0,127}))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?")


class RenderError(ValueError):
    pass


def image_ref_problem(ref: str, flavor: str) -> Optional[str]:
    """Why `ref` is not an image reference of one build of `flavor`, or None."""
    m = IMAGE_REF.fullmatch(ref)
    if not m or not (m.group("tag") or m.group("digest")):
        return f"{ref!r} is not REPO:TAG, REPO@sha256:DIGEST or REPO:TAG@sha256:DIGEST"
    tag = m.group("tag")
    if m.group("digest"):
        return None if tag is None or tag.endswith("-" + flavor) else f"{ref!r}: the tag does not end in -{flavor}"
    pinned = PINNED_TAG.fullmatch(tag)
    if not pinned or pinned.group("flavor") != flavor:
        return (f"{ref!r}: the tag must be <version>-<git revision>-{flavor} (infra/docker/build.sh) or carry a "
                "digest; a reused tag never reaches a node that already pulled an older image under it")
    return None


class _Dumper(yaml.SafeDumper):
    """Flow style for collections of scalars, block style above them (as the manifests are
    written by hand), and strings that look like numbers or versions in double quotes."""

    def represent_mapping(self, tag, mapping, flow_style=None):
        node = super().represent_mapping(tag, mapping, flow_style)
        node.flow_style = all(isinstance(k, yaml.ScalarNode) and isinstance(v, yaml.ScalarNode) for k, v in node.value)
        return node

    def represent_sequence(self, tag, sequence, flow_style=None):
        node = super().represent_sequence(tag, sequence, flow_style)
        node.flow_style = all(isinstance(item, yaml.ScalarNode) for item in node.value)
        return node


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = '"' if re.fullmatch(r"[0-9][0-9.]*", value) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump(value: Any) -> list[str]:
    text = yaml.dump(value, Dumper=_Dumper, default_flow_style=None, sort_keys=False, width=120)
    return text.rstrip("\n").split("\n")


def lookup(settings: dict, path: str) -> Any:
    node: Any = settings
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            raise RenderError(f"no {path!r} in {SETTINGS.name}")
        node = node[part]
    return node


def render(text: str, settings: dict, where: str = "<text>") -> str:
    """The manifest `text` with every generated section and scalar taken from `settings`."""
    out: list[str] = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        begin = BEGIN.match(line)
        if begin:
            path, indent = begin.group("path"), begin.group("indent")
            for j in range(i + 1, len(lines)):
                if BEGIN.match(lines[j]):
                    raise RenderError(f"{where}:{j + 1}: BEGIN inside the section {path!r} (line {i + 1})")
                end = END.match(lines[j])
                if end:
                    if end.group("path") != path:
                        raise RenderError(f"{where}:{j + 1}: END of {end.group('path')!r} closes {path!r} (line {i + 1})")
                    break
            else:
                raise RenderError(f"{where}:{i + 1}: the section {path!r} has no '# END shared: {path}'")
            value = lookup(settings, path)
            if not isinstance(value, (dict, list)) or not value:
                raise RenderError(f"{where}:{i + 1}: {path!r} must be a non-empty mapping or list")
            out += [line, *(indent + piece for piece in dump(value)), lines[j]]
            i = j + 1
            continue
        if END.match(line):
            raise RenderError(f"{where}:{i + 1}: END without BEGIN")
        scalar = SCALAR.match(line)
        if scalar:
            value = lookup(settings, scalar.group("path"))
            if isinstance(value, (dict, list)):
                raise RenderError(f"{where}:{i + 1}: {scalar.group('path')!r} is not a scalar")
            (piece,) = dump(value)[:1]
            line = scalar.group("head") + piece + scalar.group("tail")
        out.append(line)
        i += 1
    return "\n".join(out)


def load_settings(path: Path = SETTINGS) -> dict:
    settings = yaml.safe_load(path.read_text())
    for flavor in FLAVORS:
        problem = image_ref_problem(str(lookup(settings, f"images.{flavor}")), flavor)
        if problem:
            raise RenderError(f"{path.name}: images.{flavor}: {problem}")
    return settings


def manifests(directory: Path = HERE) -> list[Path]:
    return sorted(directory.glob("*.yaml"))


def rendered(directory: Path = HERE, settings: Optional[dict] = None) -> dict[Path, tuple[str, str]]:
    """{manifest: (text on disk, text it should have)} for every manifest of `directory`."""
    settings = load_settings(directory / "settings" / "ray.yaml") if settings is None else settings
    out = {}
    for path in manifests(directory):
        text = path.read_text()
        out[path] = (text, render(text, settings, path.name))
    return out


def set_images(images: dict[str, str], path: Path = SETTINGS) -> None:
    """Write `images` ({flavor: reference}) into the settings file, keeping its comments."""
    text = path.read_text()
    for flavor, ref in images.items():
        problem = image_ref_problem(ref, flavor)
        if problem:
            raise RenderError(f"--image {flavor}: {problem}")
        text, n = re.subn(rf"^(  {flavor}: )\S+$", lambda m: m.group(1) + ref, text, count=1, flags=re.M)
        if n != 1:
            raise RenderError(f"{path}: no line '  {flavor}: ...' under images:")
    path.write_text(text)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="infra/k8s/render.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 where a manifest is not what the settings give")
    p.add_argument("--image", action="append", default=[], metavar="FLAVOR=REF",
                   help=f"set images.FLAVOR ({', '.join(FLAVORS)}) in the settings first (repeatable)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    images = {}
    for item in args.image:
        flavor, sep, ref = item.partition("=")
        if not sep or flavor not in FLAVORS or not ref:
            build_parser().error(f"--image {item!r}: expected FLAVOR=REF with FLAVOR one of {', '.join(FLAVORS)}")
        images[flavor] = ref
    try:
        if images:
            if args.check:
                build_parser().error("--check and --image do not go together")
            set_images(images)
        results = rendered()
    except RenderError as exc:
        print(f"render.py: {exc}", file=sys.stderr)
        return 2
    stale = 0
    for path, (old, new) in results.items():
        if old == new:
            continue
        stale += 1
        name = str(path.relative_to(HERE.parent.parent))
        if args.check:
            sys.stdout.writelines(difflib.unified_diff(old.splitlines(True), new.splitlines(True), name, name + " (rendered)"))
        else:
            path.write_text(new)
            print(f"wrote {name}")
    if args.check and stale:
        print(f"render.py --check: {stale} manifest(s) differ from {SETTINGS.relative_to(HERE.parent.parent)}: edit the "
              "settings file, not the lines between '# BEGIN shared' and '# END shared', then run infra/k8s/render.py",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
