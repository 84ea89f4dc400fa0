"""Real RGBA image sources reachable through package registries (npm, Debian apt).

Facts (packages, versions, licences, archive sha256, paths) checked against the archives on
2026-11-29. Only sources with
``licence_ok_for_shipping=True`` (MIT / public domain) may train weights or give images the
project ships; the copyleft ones are for local evaluation and experiments.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Source:
    """One registry package holding RGBA images.

    Attributes:
        name: short id used on the command line and in ``manifest.jsonl``.
        registry: ``"npm"`` (fetched with ``npm pack``) or ``"apt"`` (``apt-get download``).
        package, version: registry package name and pinned version (Debian versions may carry an
            epoch, ``1:0.18+dfsg-19``).
        licence: SPDX-like licence text of the images.
        licence_ok_for_shipping: True only for permissive licences (MIT, public domain).
        sha256: expected sha256 (hex) of the downloaded archive.
        base: folder inside the unpacked archive that holds the images; output names keep the
            path below it.
        pattern: glob (``pathlib`` syntax, relative to ``base``) selecting the images.
        kind: ``"raster"`` (decoded with :func:`alphavae.io.load_rgba`) or ``"svg"`` (rendered
            with resvg-py).
        dedupe_by_name: icon themes ship each icon at several sizes; keep only the largest file of
            each file name.
    """

    name: str
    registry: str
    package: str
    version: str
    licence: str
    licence_ok_for_shipping: bool
    sha256: str
    base: str
    pattern: str
    kind: str = "raster"
    dedupe_by_name: bool = False

    @property
    def package_version(self) -> str:
        """``package@version`` as recorded in the manifest."""
        return f"{self.package}@{self.version}"


def _icon_theme(name: str, package: str, version: str, licence: str, sha256: str, folder: str) -> Source:
    """A Debian icon theme: every PNG under ``usr/share/icons/<folder>``, largest copy per icon name."""
    return Source(name, "apt", package, version, licence, False, sha256, f"usr/share/icons/{folder}", "**/*.png",
                  dedupe_by_name=True)


SOURCES: dict[str, Source] = {
    source.name: source
    for source in (
        Source("fluent-emoji-3d", "npm", "@lobehub/fluent-emoji-3d", "1.1.0", "MIT", True,
               "c1bb7eee7de090205a232518a9ab4adb3df458bfbe8a1f78232991194c8b2e58", "package/assets", "*.webp"),
        Source("fluentui-emoji", "npm", "fluentui-emoji", "1.3.0", "MIT", True,
               "ec892e607e854859b812c7d827801756adc19955b0ef56d4ae8afcddd19492c5", "package/icons/modern", "*.svg",
               kind="svg"),
        Source("openclipart", "apt", "openclipart-png", "1:0.18+dfsg-19", "public-domain", True,
               "f07f1545a2970c2cf3fa339bc2405da1a95cf2b1827bfa05bf73eb1c20291c02", "usr/share/openclipart/png",
               "**/*.png"),
        _icon_theme("yaru", "yaru-theme-icon", "22.10.3-1", "CC-BY-SA-4.0",
                    "2caaa7aa3301bdf674c6059587e3d949563231f9e3cd976b9c829fd0e7ccda3c", "Yaru"),
        _icon_theme("moka", "moka-icon-theme", "5.5.0-2", "CC-BY-SA-4.0 OR GPL-3.0-or-later",
                    "b55540ac018cbb2b2d87f9db451e977d43436069070916025d58ad903fc83117", "Moka"),
        _icon_theme("oxygen", "oxygen-icon-theme", "5:5.103.0-1", "LGPL-3.0-or-later",
                    "3e49023e148906e41457a98a19a09858ddd761ef4f212fa356232924b3cebcce", "oxygen"),
        _icon_theme("gnome", "gnome-icon-theme", "3.12.0-5", "GPL-2.0-or-later / GPL-3.0-or-later",
                    "243520edcff2c309065b7e12ae08f666580e6098ecafa0c0f7d28c75aedcfdc3", "gnome"),
        _icon_theme("mate", "mate-icon-theme", "1.26.0-1", "LGPL-3.0-or-later OR CC-BY-SA",
                    "356945b21bf2449ab4d3c0cead5abbc84fab247b140c6d0252263470df49dc54", "mate"),
        _icon_theme("adwaita", "adwaita-icon-theme", "43-1", "CC-BY-SA-3.0 OR LGPL-3.0",
                    "4b67610565d16b604d3efd9908e8e4b5d71873c5d0f9347433df509020f22af7", "Adwaita"),
        Source("openmoji", "npm", "openmoji", "17.0.0", "CC-BY-SA-4.0", False,
               "55ee7d13485dec86e9f38c1f3a645a13382d33ff97c0cd845ee824b0aef45e68", "package/color/svg", "*.svg",
               kind="svg"),
    )
}
"""Every known source by name."""

PERMISSIVE: tuple[str, ...] = tuple(name for name, source in SOURCES.items() if source.licence_ok_for_shipping)
"""Names of the sources whose licence allows shipping (the default of the fetcher)."""


def get_sources(names: list[str] | tuple[str, ...]) -> list[Source]:
    """Look sources up by name (``"all"`` = every source, ``"permissive"`` = :data:`PERMISSIVE`).

    Returns them in the order given, without repeats. Raises ValueError naming an unknown source.
    """
    expanded: list[str] = []
    for name in names:
        group = {"all": tuple(SOURCES), "permissive": PERMISSIVE}.get(name, (name,))
        expanded += [n for n in group if n not in expanded]
    unknown = [n for n in expanded if n not in SOURCES]
    if unknown:
        raise ValueError(f"unknown source(s) {', '.join(unknown)}; known: {', '.join(SOURCES)}, all, permissive")
    return [SOURCES[n] for n in expanded]
