"""The documentation: generated reference pages are current, the site builds strictly, links stay inside the repo.

- ``docs/reference/*.md`` must equal what ``docs/gen_reference.py`` writes from the code (a config key, its
  comment, a command or an option changed without ``make docs`` fails here);
- ``mkdocs build --strict`` must pass (a link to a missing page or anchor is an error), and a planted broken link
  must make it fail, so the strictness is real;
- ``README.md`` stays within 200 lines, its links resolve inside the repository, and neither it nor a page
  links to another site or to a path outside the repository.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PAGES = sorted([ROOT / "README.md", *DOCS.rglob("*.md")])
# Hosts reserved for examples (RFC 2606) and this machine: a URL to them points at no other site.
EXAMPLE_HOSTS = re.compile(r"^(localhost|127\.0\.0\.1|(.+\.)?example\.(org|com|net))(:\d+)?$")
URL = re.compile(r"https?://([^/\s`'\"<>)\]]*)")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def gen_reference():
    spec = importlib.util.spec_from_file_location("gen_reference", DOCS / "gen_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def generated():
    gen = gen_reference()
    return gen, gen.pages()


def mkdocs_build(project: Path, site: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(project / "mkdocs.yml"),
                           "-d", str(site)], capture_output=True, text=True, env=env, timeout=120)


def test_reference_pages_are_current(generated):
    gen, pages = generated
    assert set(pages) == {Path("docs/reference/config.md"), Path("docs/reference/cli.md")}
    stale = gen.stale(ROOT, pages)
    assert not stale, f"{stale} out of date: run `.venv/bin/python docs/gen_reference.py` (or `make docs`)"


def test_reference_pages_cover_every_key_and_command(generated):
    _, pages = generated
    from m2fdist.cli import COMMANDS
    from m2fdist.config.help import describe
    from m2fdist.config.schema import ExtractConfig, RunConfig
    from m2fdist.pipeline import PipelineConfig

    config, cli = pages[Path("docs/reference/config.md")], pages[Path("docs/reference/cli.md")]
    for instance in (RunConfig(), ExtractConfig(), PipelineConfig()):
        for key in describe(instance):
            assert f"| `{key.name}` |" in config, key.name
    for name in COMMANDS:
        assert f"\n## {name}\n\n```text\nusage: m2fdist {name} " in cli, name


def test_check_mode_finds_a_stale_page(generated, tmp_path):
    gen, pages = generated
    assert gen.write(tmp_path, pages) == list(pages)
    assert gen.stale(tmp_path, pages) == []
    page = tmp_path / "docs/reference/config.md"
    page.write_text(page.read_text() + "edited by hand\n")
    assert gen.stale(tmp_path, pages) == [Path("docs/reference/config.md")]


def test_site_builds_strictly(tmp_path):
    done = mkdocs_build(ROOT, tmp_path / "site")
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "site/index.html").exists() and (tmp_path / "site/reference/config.html").exists()
    assert not (tmp_path / "site/gen_reference.py").exists()


def test_a_broken_link_fails_the_build(tmp_path):
    project = tmp_path / "project"
    shutil.copytree(DOCS, project / "docs", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "mkdocs.yml", project / "mkdocs.yml")
    with open(project / "docs/index.md", "a", encoding="utf-8") as f:
        f.write("\nSee [a missing page](no-such-page.md) and [a missing anchor](data.md#no-such-anchor).\n")
    done = mkdocs_build(project, tmp_path / "site")
    out = done.stdout + done.stderr
    assert done.returncode != 0, out
    assert "no-such-page.md" in out and "no-such-anchor" in out, out


def test_readme_is_short():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move detail into docs/"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_nothing_points_outside_the_repository(page):
    text = page.read_text(encoding="utf-8")
    hosts = [host for host in URL.findall(text) if not EXAMPLE_HOSTS.match(host)]
    assert not hosts, f"{page.name} links to other sites: {hosts}"
    assert "../shared" not in text
    for target in LINK.findall(text):
        assert not re.match(r"^[a-z][a-z0-9+.-]*:", target), f"{page.name}: {target} is not a relative link"
        path = target.split("#")[0]
        if not path:
            continue
        resolved = (page.parent / path).resolve()
        assert not path.startswith("/"), f"{page.name}: {target} is absolute"
        assert resolved.is_relative_to(ROOT), f"{page.name}: {target} leaves the repository"
        assert resolved.exists(), f"{page.name}: {target} does not exist"


def test_readme_anchors_exist():
    from markdown.extensions.toc import slugify

    def anchors(page: Path) -> set[str]:
        out, fenced = set(), False
        for line in page.read_text(encoding="utf-8").splitlines():
            if line.startswith("```"):
                fenced = not fenced
            elif not fenced and re.match(r"#{1,6} ", line):
                out.add(slugify(line.lstrip("#").strip().replace("`", ""), "-"))
        return out

    for target in LINK.findall((ROOT / "README.md").read_text(encoding="utf-8")):
        if "#" in target and not target.startswith("#"):
            path, anchor = target.split("#", 1)
            assert anchor in anchors(ROOT / path), f"README.md: {target}: no such heading"
