"""Deployment commands: `spendgate mdm render|validate`, `spendgate ca init|show`, `spendgate doctor`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.markup import escape

from spendgate import resources
from spendgate.cli.output import console, print_json
from spendgate.deploy import ca, doctor, render, site


def register(sub: argparse._SubParsersAction) -> None:
    mdm = sub.add_parser("mdm", help="render the MDM kit (PAC, profiles, scripts, agent settings)")
    msub = mdm.add_subparsers(dest="mdm_command", required=True, metavar="SUBCOMMAND")
    p = msub.add_parser("render", help="write every file of the kit from one site config")
    p.add_argument("--config", type=Path, required=True, help="site config (see mdm/site.example.yaml)")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.set_defaults(func=cmd_render)
    p = msub.add_parser("validate", help="check a site config; problems as FILE:LINE:COL")
    p.add_argument("--config", type=Path, required=True)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("addon", help="print the path of the mitmproxy addon: mitmdump -s \"$(spendgate addon)\"")
    p.set_defaults(func=lambda args: print(resources.addon()))

    cap = sub.add_parser("ca", help="the gateway's certificate authority")
    csub = cap.add_subparsers(dest="ca_command", required=True, metavar="SUBCOMMAND")
    p = csub.add_parser("init", help="create (or --import) the CA where mitmdump looks for it")
    p.add_argument("--confdir", type=Path, default=None, help="mitmproxy confdir (default $SPENDGATE_CONFDIR or ~/.mitmproxy)")
    p.add_argument("--import", dest="import_file", type=Path, help="PEM with the CA certificate (and key, unless --key)")
    p.add_argument("--key", type=Path, help="PEM private key for --import")
    p.add_argument("--cn", default=ca.DEFAULT_CN, help="certificate common name")
    p.add_argument("--org", default="spendgate", help="certificate organization")
    p.add_argument("--days", type=int, default=ca.DEFAULT_DAYS, help="validity in days")
    p.add_argument("--force", action="store_true", help="replace an existing CA (rotation: read mdm/README.md)")
    p.add_argument("--bundle", type=Path, help="also write public roots + this CA here (for SSL_CERT_FILE)")
    p.add_argument("--extra-roots", type=Path, help="internal roots to add to --bundle")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_ca_init)
    p = csub.add_parser("show", help="print the CA's subject, validity and fingerprints")
    p.add_argument("--confdir", type=Path, default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_ca_show)

    p = sub.add_parser("doctor", help="check this machine against what the MDM kit promised")
    p.add_argument("--site", type=Path, default=None, help="site.json the install script placed "
                                                         "(default $SPENDGATE_SITE or the OS kit path)")
    p.add_argument("--os-store", type=Path, default=None, help="check this CA bundle instead of the OS trust store")
    p.add_argument("--claude-settings", type=Path, default=None, help="managed-settings.json to check")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_doctor)


def _fail(msg: str) -> int:
    print(f"spendgate: {msg}", file=sys.stderr)
    return 2


def _load_site(args: argparse.Namespace) -> site.Site | None:
    """The site config, with its warnings printed; None (after printing why) when invalid."""
    try:
        s = site.load(args.config)
    except site.SiteError as e:
        print(e, file=sys.stderr)
        return None
    for w in s.warnings:
        print(w.render(str(args.config)), file=sys.stderr)
    return s


def cmd_validate(args: argparse.Namespace) -> int:
    s = _load_site(args)
    if s is None:
        return 1
    print(f"{args.config}: ok ({s.mode} mode, gateway {s.proxy_hostport}, {len(s.hosts)} provider hosts)")
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    s = _load_site(args)
    if s is None:
        return 1
    written = render.write(render.render(s), args.out)
    for path in written:
        print(path)
    return 0


def _ca_dict(info: ca.CAInfo) -> dict:
    return {"subject": info.subject, "not_before": info.not_before.isoformat(), "not_after": info.not_after.isoformat(),
            "sha256": info.sha256, "sha1_thumbprint": info.sha1, "cert_file": str(info.cert_file or ""),
            "key_file": str(info.key_file or ""), "key_mode": info.key_mode}


def _print_ca(info: ca.CAInfo, as_json: bool) -> None:
    if as_json:
        print_json(_ca_dict(info))
        return
    print(f"subject:      {info.subject}")
    print(f"valid:        {info.not_before:%Y-%m-%d} .. {info.not_after:%Y-%m-%d}")
    print(f"SHA-256:      {info.sha256}")
    print(f"SHA-1 (Windows thumbprint): {info.sha1}")
    print(f"certificate:  {info.cert_file}   (public: give this to the MDM kit, ca.cert)")
    if info.key_file:
        print(f"private key:  {info.key_file}   (mode {info.key_mode}; never copy it off this machine)")
    if problem := ca.key_problem(info):
        print(f"WARNING: {problem}", file=sys.stderr)


def cmd_ca_init(args: argparse.Namespace) -> int:
    confdir = args.confdir or ca.default_confdir()
    try:
        if args.import_file:
            key, cert = ca.load_import(args.import_file.read_bytes(), args.key.read_bytes() if args.key else None)
        else:
            key, cert = ca.generate(args.cn, args.org, args.days)
        info = ca.write_confdir(confdir, key, cert, force=args.force)
        if args.bundle:
            extra = args.extra_roots.read_bytes() if args.extra_roots else b""
            args.bundle.parent.mkdir(parents=True, exist_ok=True)
            args.bundle.write_bytes(ca.bundle_pem(ca.pem(cert), extra))
            args.bundle.chmod(0o644)
    except ca.CAError as e:
        return _fail(str(e))
    except OSError as e:
        return _fail(f"{e.filename or ''}: {e.strerror}")
    _print_ca(info, args.json)
    return 0


def cmd_ca_show(args: argparse.Namespace) -> int:
    try:
        info = ca.info(args.confdir or ca.default_confdir())
    except ca.CAError as e:
        return _fail(str(e))
    _print_ca(info, args.json)
    return 1 if ca.key_problem(info) else 0


_MARKS = {"ok": "[green]✔[/]", "fail": "[red]✘[/]", "warn": "[yellow]![/]", "skip": "[dim]-[/]"}


def cmd_doctor(args: argparse.Namespace) -> int:
    import os

    path = args.site or doctor.default_site_path()
    try:
        site_doc = json.loads(path.read_text())
    except OSError as e:
        return _fail(f"cannot read {path} ({e.strerror}): install the MDM kit, or pass --site")
    except ValueError as e:
        return _fail(f"{path} is not JSON: {e}")
    checks = doctor.run(site_doc, os.environ, os_store=args.os_store, claude_settings=args.claude_settings)
    if args.json:
        print_json(doctor.as_json(checks))
    else:
        for c in checks:
            console.print(f"{_MARKS[c.status]} [bold]{escape(c.name)}[/]: {escape(c.detail)}", highlight=False, soft_wrap=True)
            if c.fix and c.status != "ok":
                console.print(f"    fix: {escape(c.fix)}", highlight=False, soft_wrap=True)
        bad = [c.name for c in checks if c.status == "fail"]
        console.print(f"[red]{len(bad)} problem(s): {escape(', '.join(bad))}[/]" if bad else "[green]all good[/]",
                      highlight=False, soft_wrap=True)
    return 1 if doctor.failed(checks) else 0
