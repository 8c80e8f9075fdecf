"""Rebuild offline.html, the page template of ``dvc plots show`` (.dvc/config:
``plots.html_template``), from the npm packages of vega, vega-lite and vega-embed.

DVC's own template loads these three scripts from a CDN, so offline only the
images of a plots page show. This one carries their minified builds inline:

    npm pack vega@5.33.1 vega-lite@5.23.0 vega-embed@6.29.0
    python assets/plots/build_template.py vega-5.33.1.tgz vega-lite-5.23.0.tgz vega-embed-6.29.0.tgz

It also writes LICENSE (the three packages' BSD-3-Clause licences). DVC fills the
template by plain text replacement of ``{plot_divs}`` and ``{refresh_tag}``; the
scripts placeholder is left out on purpose, so the CDN tags are never added.
"""
from __future__ import annotations

import json
import sys
import tarfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
BUILDS = {"vega": "build/vega.min.js", "vega-lite": "build/vega-lite.min.js", "vega-embed": "build/vega-embed.min.js"}
PAGE = """<!DOCTYPE html>
<html>
<head>
    {{refresh_tag}}
    <meta charset="utf-8">
    <title>DVC Plot</title>
    <!-- {versions}: minified builds inlined from the npm packages, BSD-3-Clause
         (assets/plots/LICENSE; rebuilt by assets/plots/build_template.py), so the charts render offline -->
{scripts}
    <style>
        table {{
            border-spacing: 15px;
        }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


def read_package(tgz: Path) -> tuple[dict, str, str]:
    """(package.json, minified build without its source-map comment, licence text) of an npm tarball."""
    with tarfile.open(tgz) as tar:
        def text(name: str) -> str:
            return tar.extractfile(f"package/{name}").read().decode()
        meta = json.loads(text("package.json"))
        script = text(BUILDS[meta["name"]])
        names = tar.getnames()
        licence = text("LICENSE") if "package/LICENSE" in names else (
            f"The npm package ships no LICENSE file; its package.json declares {meta['license']}, and the licence\n"
            f"text with its copyright notice is in the package's repository: {meta['repository']} on GitHub")
        return meta, "\n".join(l for l in script.splitlines() if not l.startswith("//# sourceMappingURL=")), licence


def main(tarballs: list[str]) -> None:
    packages = {}
    for tgz in tarballs:
        meta, script, licence = read_package(Path(tgz))
        if meta["license"] != "BSD-3-Clause":
            raise SystemExit(f"{tgz}: licence {meta['license']}, not BSD-3-Clause: check before vendoring")
        # an inline script ends at the first '</script'; DVC replaces '{plot_divs}' etc. anywhere in the page
        for bad in ("</script", "{plot_divs}", "{refresh_tag}", "{scripts}"):
            if bad in script.lower():
                raise SystemExit(f"{tgz}: the build contains {bad!r} and cannot be inlined as is")
        packages[meta["name"]] = (meta["version"], script, licence)
    if sorted(packages) != sorted(BUILDS):
        raise SystemExit(f"need the npm tarballs of {', '.join(BUILDS)}; got {', '.join(packages)}")
    order = list(BUILDS)  # vega-lite and vega-embed use the globals vega defines
    versions = ", ".join(f"{name} {packages[name][0]}" for name in order)
    scripts = "\n".join(f"    <script>{packages[name][1]}</script>" for name in order)
    (HERE / "offline.html").write_text(PAGE.format(versions=versions, scripts=scripts))
    (HERE / "LICENSE").write_text("".join(
        f"== {name} {packages[name][0]} (BSD-3-Clause)\n\n{packages[name][2].strip()}\n\n" for name in order)
        + "Their minified builds also bundle their dependencies, under permissive licences: the vega-* modules\n"
          "(BSD-3-Clause, the same authors), d3 modules (ISC), and in vega-embed fast-json-patch and\n"
          "json-stringify-pretty-compact (MIT), semver (ISC) and tslib (0BSD).\n")
    print(f"wrote {HERE / 'offline.html'} ({versions}) and {HERE / 'LICENSE'}")


if __name__ == "__main__":
    main(sys.argv[1:])
