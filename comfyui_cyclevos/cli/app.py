"""The ``cyclevos`` command group: click's usage errors as one line, SIGTERM as Ctrl-C, and the process's own
allocator settings."""

from __future__ import annotations

import signal
import sys

import click

from ..runtime.allocator import keep_freed_memory


def _on_sigterm(signum, frame):
    raise KeyboardInterrupt  # a terminated run stops as an interrupted one: exit 130, only partial outputs


class OneLineGroup(click.Group):
    """Click's usage errors (a bad option, a missing argument) as the one line ``error: ...`` and exit code 2,
    like the library's errors; SIGTERM is handled as Ctrl-C."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        previous = None
        try:
            previous = signal.signal(signal.SIGTERM, _on_sigterm)
        except ValueError:  # not the main thread: leave signals alone
            pass
        try:
            code = super().main(args, prog_name, complete_var, False, **extra)
        except click.exceptions.NoArgsIsHelpError as e:
            click.echo(e.ctx.get_help() if e.ctx is not None else str(e), err=True)
            sys.exit(2)
        except click.ClickException as e:
            click.echo(f"error: {' '.join(e.format_message().split())}", err=True)
            sys.exit(2)
        except click.exceptions.Abort:
            click.echo("interrupted: the output was not completed", err=True)
            sys.exit(130)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        sys.exit(code if isinstance(code, int) else 0)


@click.group(cls=OneLineGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="comfyui-cyclevos")
def main():
    """cyclevos: video object segmentation with a cycle-consistent space-time memory network.

    Give a video and a mask of the objects on its first frame; cyclevos follows them through the video.
    """
    keep_freed_memory()  # this process is cyclevos's own: its big tensors need not fault in again
