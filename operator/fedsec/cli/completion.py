"""``fedsec completion bash|zsh``: a shell completion script generated from the argument parser itself,
so it never lists a command or flag the CLI does not have.

zsh runs the same function through its bash compatibility layer (``bashcompinit``): one script to
keep right rather than two.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from collections.abc import Iterator
from typing import Any

SHELLS = ("bash", "zsh")


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    # argparse has no public way to list subcommands; its _SubParsersAction is stable since 3.2.
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every (command path, parser), the top level first: ((), fedsec), (("audit",), ...), ..."""
    yield path, parser
    for name, child in _subparsers(parser).items():
        yield from walk(child, (*path, name))


def _words(parser: argparse.ArgumentParser) -> list[str]:
    """The words to offer where no flag is being typed: subcommands, or a positional's choices."""
    subs = list(_subparsers(parser))
    if subs:
        return subs
    return [str(c) for a in parser._actions if not a.option_strings and a.choices is not None for c in a.choices]


def _takes_value(action: argparse.Action) -> bool:
    return bool(action.option_strings) and action.nargs != 0


def _value_words(action: argparse.Action) -> str | None:
    """What to offer after this flag: its choices, file names (None) for a path, else nothing."""
    if action.choices is not None:
        return " ".join(map(str, action.choices))
    return None if action.type is Path else ""


def bash_script(parser: argparse.ArgumentParser) -> str:
    prog = parser.prog
    func = "_" + prog.replace("-", "_")
    paths = [p for p, _ in walk(parser)]
    known = "|".join(shlex.quote("/" + "/".join(p)) for p in paths if p)
    cases, values = [], []
    for path, p in walk(parser):
        key = shlex.quote("/" + "/".join(path)) if path else '""'
        options = sorted(o for a in p._actions for o in a.option_strings)
        commands = " ".join(_words(p))
        cases.append(f'        {key}) commands={shlex.quote(commands)}; options={shlex.quote(" ".join(options))} ;;')
        for a in p._actions:
            if not _takes_value(a):
                continue
            words = _value_words(a)
            pattern = "|".join(shlex.quote(f"{'/' + '/'.join(path) if path else ''}|{o}") for o in a.option_strings)
            if words is None:
                values.append(f'        {pattern}) COMPREPLY=($(compgen -f -- "$cur")); return 0 ;;')
            else:
                values.append(f'        {pattern}) COMPREPLY=($(compgen -W {shlex.quote(words)} -- "$cur")); return 0 ;;')
    return "\n".join([
        f"# {prog} shell completion, generated from {prog}'s own argument parser ({prog} completion bash).",
        f"{func}() {{",
        '    local cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD-1]}" path="" i w',
        "    # The command path so far: the words that name a subcommand of the one before.",
        "    for ((i = 1; i < COMP_CWORD; i++)); do",
        '        w="${COMP_WORDS[i]}"',
        '        case "${path}/${w}" in',
        f'            {known}) path="${{path}}/${{w}}" ;;',
        "        esac",
        "    done",
        '    local commands="" options=""',
        '    case "$path" in',
        *cases,
        "    esac",
        '    case "${path}|${prev}" in',
        *values,
        "    esac",
        '    if [[ "$cur" == -* ]]; then',
        '        COMPREPLY=($(compgen -W "$options" -- "$cur"))',
        '    elif [[ -n "$commands" ]]; then',
        '        COMPREPLY=($(compgen -W "$commands" -- "$cur"))',
        "    else",
        '        COMPREPLY=($(compgen -f -- "$cur"))',
        "    fi",
        "    return 0",
        "}",
        f"complete -o filenames -F {func} {prog}",
        "",
    ])


def zsh_script(parser: argparse.ArgumentParser) -> str:
    return "\n".join([
        f"#compdef {parser.prog}",
        f"# {parser.prog} zsh completion: the bash function below, through zsh's bashcompinit.",
        "(( $+functions[compdef] )) || { autoload -U compinit && compinit }",
        "autoload -U +X bashcompinit && bashcompinit",
        bash_script(parser),
    ])


def command(args: argparse.Namespace) -> int:
    from fedsec.cli.main import build_parser

    parser = build_parser()
    print(bash_script(parser) if args.shell == "bash" else zsh_script(parser), end="")
    return 0


def add_parser(sub: Any) -> None:
    c = sub.add_parser(
        "completion", help="print a shell completion script (bash or zsh)",
        description="Print a completion script for your shell. bash: source <(fedsec completion bash), or save it "
        "as ~/.local/share/bash-completion/completions/fedsec. zsh: source <(fedsec completion zsh) in ~/.zshrc.")
    c.add_argument("shell", choices=SHELLS, help="the shell to complete in: bash or zsh")
    c.set_defaults(fn=command)
