"""The front page of a published repository: ``index.html`` at its root.

A browser pointed at the repository URL gets one static page (inline CSS, no script, nothing
loaded from elsewhere) that says what the repository serves: the dom0 targets and consumer
families, a table of the module packages (target, DRBD version, kernel, name-version-release,
arch), how to install from it per family (the ``.repo`` file, the key and its fingerprint,
the commands), the provenance of each build as its signed statement records it, and how to
verify the repository.

``publish`` writes the page into the new version before the switch, like the metadata and
the ``.repo`` files, and ``REPO/index.html`` leads to ``current/index.html``: the page changes
with the repository, at once, and an interrupted publish leaves the old one.

The page is made from the publish state alone (the package index, the provenance statements,
the version's name), never from the clock, so the same state gives the same bytes.  Every
string that comes from a spec file, a manifest or a package is escaped where it is written
(:func:`text` for element content and attribute values, :func:`href` for links).  What the
page shows is read by :mod:`builder.publish.frontpage_data`.
"""

from __future__ import annotations

import html
import re
import shlex
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from builder import log
from builder.errors import ConfigError
from builder.files import write_atomic
from builder.publish import layout, provenance
from builder.publish.consumers import profile
from builder.publish.frontpage_data import (
    NOT_RECORDED,
    Build,
    Family,
    FrontPage,
    Input,
    Module,
    collect,
)
from builder.publish.store import Entry
from builder.specs import Consumer, Registry

# ---------------------------------------------------------------------------------------------
# Writing it


def text(value: object) -> str:
    """``value`` as element content or an attribute value: every markup character escaped."""
    return html.escape(str(value), quote=True)


def href(relative: str) -> str:
    """A link to ``relative`` below the page: percent-encoded (so no name can make it a
    ``javascript:`` or another site's URL), then escaped for the attribute."""
    return text(urllib.parse.quote(relative, safe="/"))


def natural(value: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key that puts 8.4.10 after 8.4.9 and 4.19.19-8.0.30 after 8.0.9."""
    return tuple(
        (0, int(part)) if part.isdigit() else (1, part)
        for part in re.split(r"(\d+)", value)
        if part
    )


def fingerprint_groups(fingerprint: str) -> str:
    """``34AC 2EB6 8248 FED6 D076  838A CD75 783A 3FD3 AC9E``, as gpg prints it."""
    groups = [fingerprint[i : i + 4] for i in range(0, len(fingerprint), 4)]
    if len(groups) == 10:
        return " ".join(groups[:5]) + "  " + " ".join(groups[5:])
    return " ".join(groups)


def _utc(moment: datetime, shown: str) -> str:
    return f'<time datetime="{moment.strftime("%Y-%m-%dT%H:%M:%SZ")}">{text(shown)}</time>'


def published_at(version: str) -> str:
    """The version's name (``20261205T061355.123456Z``) as a date, or the name itself."""
    match = re.fullmatch(r"(\d{8}T\d{6})(?:\.\d+)?Z(?:-\d+)?", version)
    if not match:
        return f"<code>{text(version)}</code>"
    moment = datetime.strptime(match.group(1), "%Y%m%dT%H%M%S").replace(tzinfo=UTC)
    return _utc(moment, moment.strftime("%Y-%m-%d %H:%M:%S UTC"))


def built_at(epoch: int | None) -> str:
    if epoch is None:
        return NOT_RECORDED
    moment = datetime.fromtimestamp(epoch, UTC)
    return _utc(moment, moment.strftime("%Y-%m-%d %H:%M UTC"))


STYLE = """
:root { color-scheme: light dark; --line: #8884; --soft: #8881; --weak: #b35900; }
* { box-sizing: border-box; }
body { font: 16px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto;
  max-width: 80rem; padding: 1rem; }
h1 { font-size: 1.6rem; margin: .5rem 0; }
h2 { font-size: 1.3rem; margin-top: 2rem; border-bottom: 1px solid var(--line); }
h3 { font-size: 1.1rem; }
nav { display: flex; flex-wrap: wrap; gap: .4rem 1rem; }
code, pre { font-family: ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace;
  font-size: .9em; }
pre { overflow-x: auto; padding: .6rem .8rem; background: var(--soft);
  border: 1px solid var(--line); border-radius: 4px; }
.scroll { overflow-x: auto; max-width: 100%; border: 1px solid var(--line); border-radius: 4px; }
table { border-collapse: collapse; width: 100%; }
th, td { padding: .35rem .7rem; text-align: left; vertical-align: top; white-space: nowrap;
  border-bottom: 1px solid var(--line); }
thead th { background: var(--soft); }
tbody + tbody { border-top: 3px double var(--line); }
td.nvr { white-space: normal; min-width: 14rem; }
h1, h2, h3, p, li, dd, summary, .hash, .fpr { overflow-wrap: anywhere; }
.fpr { font-weight: 600; }
.muted { opacity: .75; }
.weak { color: var(--weak); font-weight: 600; }
details { border: 1px solid var(--line); border-radius: 4px; margin: .5rem 0;
  padding: .3rem .8rem; }
summary { cursor: pointer; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: .2rem 1rem; }
dt { font-weight: 600; }
dd { margin: 0; }
@media (max-width: 40rem) {
  body { padding: .6rem; }
  dl { grid-template-columns: 1fr; }
  dd { margin-bottom: .4rem; }
}
"""

# Nothing on the page runs or loads: a name that slipped past the escaping still could not.
POLICY = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"


def render(page: FrontPage) -> str:
    """The page, as text; the same page gives the same text."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f'<meta http-equiv="Content-Security-Policy" content="{POLICY}">',
        f"<title>DRBD for Xen dom0: {text(layout.REPO_ID)}</title>",
        f"<style>{STYLE}</style>",
        "</head>",
        "<body>",
        *_header(page),
        "<main>",
        *_served(page),
        *_modules(page),
        *_install(page),
        *_provenance(page),
        *_verify(),
        "</main>",
        '<footer><p class="muted">Written by <code>python -m builder publish</code> from the '
        "package index and the signed provenance statements. Trust the signatures, not this "
        "page: yum checks every package and the metadata against the key.</p></footer>",
        "</body>",
        "</html>",
        "",
    ]
    return "\n".join(parts)


def _header(page: FrontPage) -> list[str]:
    return [
        "<header>",
        "<h1>DRBD for Xen dom0</h1>",
        f"<p>The signed yum repository <code>{text(layout.REPO_ID)}</code>: "
        f"{len(page.modules)} kernel module package(s) for {len(page.targets)} dom0 target(s). "
        f"Published {published_at(page.version)} (version <code>{text(page.version)}</code>)."
        "</p>",
        '<nav aria-label="Sections">',
        '<a href="#modules">Modules</a>',
        '<a href="#install">Install</a>',
        '<a href="#provenance">Provenance</a>',
        '<a href="#verify">Verify</a>',
        "</nav>",
        "</header>",
    ]


def _families(page: FrontPage) -> list[Family]:
    return sorted(page.families, key=lambda f: f.consumer.value)


def _served(page: FrontPage) -> list[str]:
    out = ['<section id="served">', "<h2>What it serves</h2>", "<h3>dom0 targets</h3>", "<ul>"]
    for target in sorted(page.targets, key=lambda t: natural(t.id)):
        name = f" ({text(target.name)})" if target.name else ""
        out.append(
            f"<li><code>{text(target.id)}</code>{name}: <code>{text(target.family)}</code></li>"
        )
    if not page.targets:
        out.append(f"<li>{NOT_RECORDED}</li>")
    out += ["</ul>", "<h3>Consumer families</h3>", "<ul>"]
    for family in _families(page):
        rules = profile(family.consumer)
        folders = ", ".join(f"<code>{text(f)}/</code>" for f in family.folders)
        signatures = (
            f"version {rules.signature_packet} signature packets"
            if rules.signature_packet
            else "version 4 signature packets"
        )
        out.append(
            f'<li><a href="#install-{text(family.consumer.value)}">'
            f"<code>{text(family.consumer.value)}</code></a>: {folders}; for {text(rules.rpm)} "
            f"and {text(rules.yum)} ({text(rules.signature_digest.upper())} {signatures}, "
            f"<code>{text(rules.repodata_checksum)}</code> metadata checksums)</li>"
        )
    out += ["</ul>", "</section>"]
    return out


def _module_key(module: Module) -> tuple[Any, ...]:
    return (
        natural(module.target),
        natural(module.drbd_version),
        natural(module.kernel_release),
        natural(module.kernel_evr),
        natural(module.nvr),
        module.arch,
        module.path,
    )


def _or_not_recorded(value: str, code: bool = True) -> str:
    if not value:
        return f'<span class="muted">{NOT_RECORDED}</span>'
    return f"<code>{text(value)}</code>" if code else text(value)


def _modules(page: FrontPage) -> list[str]:
    out = [
        '<section id="modules">',
        "<h2>Kernel modules</h2>",
        "<p>Which DRBD version is built for which dom0 target and kernel: one row per published "
        "module package. A module loads only into the kernel release it was built for "
        "(<code>uname -r</code> on dom0).</p>",
    ]
    if not page.modules:
        return [*out, "<p>No module package is published.</p>", "</section>"]
    out += [
        '<div class="scroll" role="region" aria-label="Module packages" tabindex="0">',
        '<table id="module-table">',
        "<thead><tr>"
        '<th scope="col">Target</th>'
        '<th scope="col">DRBD</th>'
        '<th scope="col">Kernel (<code>uname -r</code>)</th>'
        '<th scope="col">kernel-devel</th>'
        '<th scope="col">Package</th>'
        '<th scope="col">Arch</th>'
        "</tr></thead>",
    ]
    names = {t.id: t.name for t in page.targets}
    current: str | None = None
    for module in sorted(page.modules, key=_module_key):
        if module.target != current:
            if current is not None:
                out.append("</tbody>")
            out.append("<tbody>")
            current = module.target
        title = f' title="{text(names[module.target])}"' if names.get(module.target) else ""
        out.append(
            "<tr>"
            f"<td{title}>{_or_not_recorded(module.target)}</td>"
            f"<td>{_or_not_recorded(module.drbd_version)}</td>"
            f"<td>{_or_not_recorded(module.kernel_release)}</td>"
            f"<td>{_or_not_recorded(module.kernel_evr)}</td>"
            f'<td class="nvr"><a href="{href(module.path)}">'
            f"<code>{text(module.nvr)}</code></a></td>"
            f"<td><code>{text(module.arch)}</code></td>"
            "</tr>"
        )
    out += ["</tbody>", "</table>", "</div>", "</section>"]
    return out


def _shell(*words: str) -> str:
    return " ".join(shlex.quote(word) for word in words)


def _install(page: FrontPage) -> list[str]:
    base = page.base_url.rstrip("/")
    key_url = f"{base}/{layout.KEY_FILE_NAME}"
    out = [
        '<section id="install">',
        "<h2>Install</h2>",
        f'<p>The repository key: <a href="{href(layout.KEY_FILE_NAME)}">'
        f"<code>{text(layout.KEY_FILE_NAME)}</code></a>, fingerprint</p>",
        f'<p><code class="fpr">{text(fingerprint_groups(page.fingerprint))}</code></p>',
        "<p>The commands below and the runbook's install step print it unspaced: "
        f'<code class="fpr">{text(page.fingerprint)}</code></p>',
        "<p>Compare it with the fingerprint the repository's owner gave you another way: this "
        "page is served beside the key and cannot vouch for it.</p>",
    ]
    for family in _families(page):
        consumer = family.consumer.value
        rules = profile(family.consumer)
        serves = sorted(
            (t for t in page.targets if t.family.split("/", 1)[0] == consumer),
            key=lambda t: natural(t.id),
        )
        wanted_by: dict[str, set[str]] = {}  # module package name -> the targets it serves
        for module in page.modules:
            if module.path.split("/", 1)[0] == consumer and module.target:
                wanted_by.setdefault(module.name, set()).add(module.target)
        commands = [
            "# as root on the dom0",
            _shell("curl", "-fsS", "-o", layout.INSTALLED_KEY_FILE, key_url),
            # gpg 2.1 and later print no fingerprint for a key file in the human listing.
            _shell(
                "gpg", "--quiet", "--with-colons", "--with-fingerprint", layout.INSTALLED_KEY_FILE
            )
            + " | "
            + _shell("awk", "-F:", '$1 == "fpr" { print $10 }')
            + "   # prints the fingerprint above",
            _shell("rpm", "--import", layout.INSTALLED_KEY_FILE),
            _shell("curl", "-fsS", "-o", layout.INSTALLED_REPO_FILE, f"{base}/{family.repo_file}"),
        ]
        if rules.metadata_check_needs_pygpgme:
            commands.append(
                "python -c 'import gpgme'   # yum checks repomd.xml.asc only through pygpgme"
            )
        for name, targets in sorted(wanted_by.items(), key=lambda item: natural(item[0])):
            served = ", ".join(sorted(targets, key=natural))
            commands.append(f"{_shell('yum', 'install', name)}   # {served}")
        if not wanted_by:
            commands.append("yum install MODULE-PACKAGE   # see the table above")
        out += [
            f'<h3 id="install-{text(consumer)}"><code>{text(consumer)}</code>: '
            + (", ".join(f"<code>{text(t.id)}</code>" for t in serves) or NOT_RECORDED)
            + "</h3>",
            "<ol>",
            f'<li><p>The <code>.repo</code> file: <a href="{href(family.repo_file)}">'
            f"<code>{text(family.repo_file)}</code></a>, installed as "
            f"<code>{text(layout.INSTALLED_REPO_FILE)}</code>:</p>"
            f"<pre>{text(family.repo_text)}</pre></li>",
            "<li><p>The key, the <code>.repo</code> file and the module package for the "
            "dom0's target (yum installs the userland it requires):</p>"
            f"<pre>{text(chr(10).join(commands))}</pre></li>",
            "</ol>",
        ]
        if rules.metadata_check_needs_pygpgme:
            out.append(
                f"<p>{text(rules.yum)} checks the metadata signature "
                "(<code>repo_gpgcheck=1</code>) only through the <code>gpgme</code> Python "
                "module (pygpgme): without it every metadata download fails.</p>"
            )
    out += [
        "<p>For a pair of hosts with replicated storage, <code>python -m builder deploy</code> "
        "writes runbooks that install the same way.</p>",
        "</section>",
    ]
    return out


def _provenance(page: FrontPage) -> list[str]:
    out = [
        '<section id="provenance">',
        "<h2>Provenance</h2>",
        "<p>Each build's inputs with their sha256 and how each was trusted, as its signed "
        "statement records them (an in-toto Statement beside the packages, with the build's "
        "<code>manifest.json</code> as its predicate and a detached signature by the repository "
        "key). The build date is the packages' build time (<code>SOURCE_DATE_EPOCH</code>).</p>",
    ]
    for build in sorted(page.builds, key=lambda b: (natural(b.target), natural(b.build_name))):
        out += _build_details(build)
    if page.unattributed:
        out += [
            "<h3>Published before provenance was recorded</h3>",
            "<ul>",
            *(f"<li><code>{text(path)}</code></li>" for path in sorted(page.unattributed)),
            "</ul>",
        ]
    out.append("</section>")
    return out


def _build_details(build: Build) -> list[str]:
    count = f"{len(build.packages)} package(s)"
    if build.problem:
        return [
            "<details>",
            f'<summary><span class="weak">{text(build.statement)}</span>: {count}</summary>',
            f"<p>{text(build.problem)}.</p>",
            "</details>",
        ]
    weak = ' · <span class="weak">weak trust</span>' if build.weak_trust else ""
    summary = (
        f"<summary><code>{text(build.target)}</code> <code>{text(build.build_name)}</code> · "
        f"built {built_at(build.source_date_epoch)} · {count}{weak}</summary>"
    )
    rows = [
        ("Target", _or_not_recorded(build.target)),
        ("DRBD", _or_not_recorded(build.drbd_version)),
        ("Kernel", _or_not_recorded(build.kernel_release)),
        ("kernel-devel", _or_not_recorded(build.kernel_evr)),
        ("Built", built_at(build.source_date_epoch)),
        ("Build image", _or_not_recorded(build.image)),
        ("Tool", _or_not_recorded(build.tool, code=False)),
        ("Inputs", _inputs(build.inputs)),
        (
            "Statement",
            f'<a href="{href(build.statement)}"><code>{text(build.statement)}</code></a> '
            f'(<a href="{href(build.statement + ".asc")}">signature</a>)',
        ),
        (
            "Packages",
            "<br>".join(f"<code>{text(name)}</code>" for name in sorted(build.packages)),
        ),
    ]
    return [
        "<details>",
        summary,
        "<dl>",
        *(f"<dt>{label}</dt><dd>{value}</dd>" for label, value in rows),
        "</dl>",
        "</details>",
    ]


def _inputs(inputs: Sequence[Input]) -> str:
    if not inputs:
        return f'<span class="muted">{NOT_RECORDED}</span>'
    items = []
    for item in inputs:
        if not item.trust:
            trust = f'<span class="muted">trust {NOT_RECORDED}</span>'
        elif provenance.weak(item.trust):
            trust = f'trusted: <span class="weak">{text(item.trust)} (!)</span>'
        else:
            trust = f"trusted: {text(item.trust)}"
        items.append(
            f"<li><strong>{text(item.what)}</strong> {_or_not_recorded(item.name)}<br>"
            f'sha256 <code class="hash">{text(item.sha256 or NOT_RECORDED)}</code><br>'
            f"{trust}</li>"
        )
    return "<ul>" + "".join(items) + "</ul>"


def _verify() -> list[str]:
    key = layout.KEY_FILE_NAME
    commands = "\n".join(
        [
            "python -m builder verify --repo DIR",
            "python -m builder verify --repo DIR --key-file RPM-GPG-KEY-obtained-out-of-band",
        ]
    )
    trace = "\n".join(
        [
            "sha256sum PACKAGE.rpm                           # the digest of what dom0 installed",
            "grep -rl SHA256 provenance/                     # its statement",
            f"gpg --dearmor < {key} > key.gpg",
            "gpgv --keyring ./key.gpg STATEMENT.asc STATEMENT   # signed by the repository key",
        ]
    )
    return [
        '<section id="verify">',
        "<h2>Verify</h2>",
        "<p>On the dom0, yum does it on every download: the <code>.repo</code> files set "
        "<code>gpgcheck=1</code> and <code>repo_gpgcheck=1</code>, so a package or metadata "
        "file not signed by the key above is refused. <code>rpm -K PACKAGE.rpm</code> checks "
        "one package against the imported key.</p>",
        "<p>Where the published tree is (the publishing host, or a full copy of the directory "
        "with its links), <code>verify</code> audits all of it the way a careful client would: "
        "the served key, every <code>repomd.xml.asc</code>, every metadata checksum, every "
        "package's size, checksum and signature, the package index, every provenance statement "
        "and the stable names. It lists every problem and exits with code 15 if there is any; "
        "it changes nothing.</p>",
        f"<pre>{text(commands)}</pre>",
        "<p>To trace one package to its build:</p>",
        f"<pre>{text(trace)}</pre>",
        "</section>",
    ]


# ---------------------------------------------------------------------------------------------
# Into a new version


def write(
    root: Path,
    *,
    entries: Iterable[Entry],
    store_root: Path,
    families: Mapping[str, Consumer],
    fingerprint: str,
    version: str,
    base_url: str,
    registry: Callable[[], Registry],
) -> None:
    """``index.html`` of the version assembled in ``root``, from every published package
    (``entries``) and its build's statement under ``store_root``."""
    with log.step(f"Write the front page, {layout.FRONT_PAGE}"):
        page = collect(
            entries=entries,
            store_root=store_root,
            families=families,
            repo_files={c: layout.served_repo_file(base_url, c) for c in set(families.values())},
            fingerprint=fingerprint,
            base_url=base_url,
            version=version,
            target_names=_target_names(registry),
        )
        for build in page.builds:
            if build.problem:
                log.warn(f"{build.statement}: {build.problem}; the front page says so")
        html = render(page)
        write_atomic(root / layout.FRONT_PAGE, html.encode("utf-8"))


def _target_names(registry: Callable[[], Registry]) -> dict[str, str]:
    """The spec files' names of the targets, for the front page. Publishing needs no spec
    file otherwise: one that cannot be read costs the page its names, not the publish."""
    try:
        return {target.id: target.name for target in registry().targets.values()}
    except ConfigError as exc:
        log.warn(f"the front page names targets by id only: {exc.message}")
        return {}
