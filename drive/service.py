"""`drive service ...`: run the server and mounts as systemd user services, and `mount -t`.

- `drive service server` writes `drive-server.service`, `drive service mount MP` writes
  `drive-mount-<escaped MP>.service` into the systemd user unit directory
  (`~/.config/systemd/user`, or `--unit-dir`). Both are `Type=notify`: the server says
  READY=1 once it listens, the mount once the mount point is in the mount table, so units
  ordered after them start against something that works. Pass `--start` to run
  `systemctl --user daemon-reload` and `enable --now`; otherwise the next step is printed.
- `drive service helper` makes `mount -t fuse.drive` and `/etc/fstab` lines work. mount(8)
  hands a `fuse.TYPE` mount to mount.fuse3, which runs the program named TYPE (`drive`) as
  `drive SOURCE MOUNTPOINT -o OPTIONS`, looked up on mount's own fixed PATH
  (/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin, whatever the caller's PATH).
  The helper links the `drive` script into such a directory; `drive.mount_helper` handles
  that call.

Unit files are generated text (tested by content and with `systemd-analyze verify`), never
templates with hidden state: rerunning the command rewrites them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

import platformdirs

from drive.errors import UserError

__all__ = [
    "drive_exec",
    "helper",
    "mount_unit",
    "mount_unit_name",
    "server",
    "server_unit",
    "systemd_escape_path",
]

SERVER_UNIT = "drive-server.service"
SYSTEM_BINDIRS = ("/usr/local/bin", "/usr/bin", "/bin", "/usr/local/sbin", "/usr/sbin", "/sbin")
_ESCAPE_KEEP = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789:_.")


def systemd_escape_path(path: Path) -> str:
    """`systemd-escape --path`: the unit-name form of an absolute path."""
    text = "/".join(p for p in str(path).split("/") if p)
    if not text:
        return "-"
    out = []
    for i, ch in enumerate(text):
        if ch == "/":
            out.append("-")
        elif ch in _ESCAPE_KEEP and not (i == 0 and ch == "."):
            out.append(ch)
        else:
            out.extend(f"\\x{b:02x}" for b in ch.encode("utf-8"))
    return "".join(out)


def mount_unit_name(mountpoint: Path) -> str:
    """The unit name for a mount at `mountpoint`."""
    return f"drive-mount-{systemd_escape_path(mountpoint)}.service"


def drive_exec() -> list[str]:
    """The command that runs this `drive`: its console script, else `python -m drive.cli`."""
    script = Path(sys.executable).parent / "drive"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    found = shutil.which("drive")
    if found:
        return [os.path.abspath(found)]
    return [sys.executable, "-m", "drive.cli"]


def _quote(arg: str) -> str:
    """One ExecStart= word: systemd's quoting, with `%` and `$` escaped."""
    arg = arg.replace("%", "%%").replace("$", "$$")
    if arg and not any(c in arg for c in " \t\"'\\;"):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _exec_line(argv: list[str]) -> str:
    return " ".join(_quote(a) for a in argv)


def server_unit(data: Path, listen: str | None) -> str:
    """The text of `drive-server.service` for the server over `data`."""
    argv = [*drive_exec(), "server", "serve", "--data", str(data)]
    if listen:
        argv += ["--listen", listen]
    return f"""\
# Written by `drive service server`; rerun it to regenerate.
[Unit]
Description=drive server (data in {data})
After=network-online.target
Wants=network-online.target

[Service]
Type=notify
NotifyAccess=main
ExecStart={_exec_line(argv)}
Restart=on-failure
RestartSec=2
TimeoutStartSec=120
TimeoutStopSec=30
UMask=0077

[Install]
WantedBy=default.target
"""


def mount_unit(home: Path, mountpoint: Path) -> str:
    """The text of the unit that keeps the drive of `home` mounted at `mountpoint`."""
    argv = [*drive_exec(), "--home", str(home), "mount", str(mountpoint), "--foreground"]
    return f"""\
# Written by `drive service mount`; rerun it to regenerate.
[Unit]
Description=drive mount at {mountpoint}
After=network-online.target {SERVER_UNIT}
Wants=network-online.target

[Service]
Type=notify
NotifyAccess=main
ExecStart={_exec_line(argv)}
Restart=on-failure
RestartSec=5
TimeoutStartSec=120
TimeoutStopSec=120

[Install]
WantedBy=default.target
"""


def _unit_dir(args: argparse.Namespace) -> Path:
    if args.unit_dir:
        return Path(args.unit_dir).expanduser().absolute()
    return Path(platformdirs.user_config_dir("systemd")) / "user"


def _install(args: argparse.Namespace, name: str, text: str) -> int:
    if args.print:
        sys.stdout.write(text)
        return 0
    unit_dir = _unit_dir(args)
    try:
        unit_dir.mkdir(parents=True, exist_ok=True)
        tmp = unit_dir / (name + ".tmp")
        tmp.write_text(text, "utf-8")
        os.replace(tmp, unit_dir / name)
    except OSError as exc:
        raise UserError(f"cannot write {unit_dir / name}: {exc.strerror}") from None
    print(f"wrote {unit_dir / name}")
    if args.start:
        for cmd in (["daemon-reload"], ["enable", "--now", name]):
            done = subprocess.run(
                ["systemctl", "--user", *cmd], capture_output=True, text=True, check=False
            )
            if done.returncode != 0:
                why = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"
                raise UserError(f"systemctl --user {' '.join(cmd)}: {why}")
        print(f"started {name}")
    else:
        print(
            "next: systemctl --user daemon-reload && "
            f"systemctl --user enable --now {name}\n"
            "      (and `loginctl enable-linger` to keep it running while you are logged out)"
        )
    return 0


def server(args: argparse.Namespace) -> int:
    """Install the server's user unit."""
    from drive.up import server_data_dir

    data = Path(args.data).expanduser().absolute() if args.data else server_data_dir()
    return _install(args, SERVER_UNIT, server_unit(data, args.listen))


def mount(args: argparse.Namespace) -> int:
    """Install a mount's user unit (the home must be logged in)."""
    from drive.settings import client_home, load_settings

    home = client_home()
    if not (home / "config.json").exists():
        raise UserError(f"not logged in (no {home / 'config.json'}); run `drive login` first")
    mp = Path(args.mountpoint or load_settings(home).mountpoint).expanduser().absolute()
    if not args.print:
        mp.mkdir(parents=True, exist_ok=True)
    return _install(args, mount_unit_name(mp), mount_unit(home, mp))


def helper(args: argparse.Namespace) -> int:
    """Link `drive` into a system bin directory so mount.fuse3 finds it for `-t fuse.drive`."""
    exe = drive_exec()
    if len(exe) != 1:
        raise UserError("no `drive` console script to link (install the package with pip)")
    target = Path(exe[0])
    bindir = Path(args.bindir).expanduser().absolute()
    link = bindir / "drive"
    if link.exists() or link.is_symlink():
        if link.resolve() == target.resolve():
            print(f"{link} is already this drive ({target})")
            return _helper_notes(bindir)
        raise UserError(f"{link} exists and is not {target}; remove it or pick --bindir")
    try:
        bindir.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target)
    except OSError as exc:
        raise UserError(f"cannot create {link}: {exc.strerror} (run it as root?)") from None
    print(f"linked {link} -> {target}")
    return _helper_notes(bindir)


def _helper_notes(bindir: Path) -> int:
    if str(bindir) not in SYSTEM_BINDIRS:
        print(f"note: mount(8) looks for `drive` only in {':'.join(SYSTEM_BINDIRS)}")
    if not (Path("/sbin/mount.fuse3").exists() or Path("/sbin/mount.fuse").exists()):
        print("note: /sbin/mount.fuse3 is missing: install the fuse3 package")
    print(
        "mount with:  mount -t fuse.drive HOME MOUNTPOINT -o cache_size=10G\n"
        "or in /etc/fstab:\n"
        "  /home/alice/.config/drive  /home/alice/Drive  fuse.drive  "
        "_netdev,setuid=alice  0  0\n"
        "(HOME is the client home `drive login` wrote, or `drive` for the default one)"
    )
    return 0
