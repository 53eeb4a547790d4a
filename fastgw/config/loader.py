"""Loading a config file: YAML -> substitution -> schema walk -> cross checks (L1).

The steps, each collecting every error it finds before the next runs:

1. YAML, parsed twice with PyYAML's C loader: once as a node tree to find duplicate
   keys (which YAML would silently collapse: a second ``svg-parser:`` replacing the
   first; reported with the other errors), once by ``msgspec.yaml`` into plain objects;
2. ``${VAR}`` / ``${VAR:-default}`` substitution in string values (``envsubst``);
3. the schema walk (``walk``), which converts and checks every field;
4. rules that span sections and routes (``semantics.crosscheck``);
5. if anything failed: ``ConfigError`` with all errors, in file order.  Else the config is finalised
   (route names and services filled) and returned with its warnings: settings parsed but
   not enforced yet (``pending``) and harmless oddities (``tls`` on an http service).

Errors are ``"<path>: <message>"`` where the path uses service keys and list indices
(``services.cmms-service.routes[2].methods[0]: unknown method 'FETCH'``); problems with
the file as a whole use the source name as the path.
"""

from __future__ import annotations

import os
from pathlib import Path as FsPath
from typing import Any, Mapping

import msgspec
import msgspec.inspect as mi
import yaml

from fastgw.config import auth as auth_schema
from fastgw.config import pending, semantics
from fastgw.config.envsubst import substitute
from fastgw.config.errors import ConfigError
from fastgw.config.gateway import GatewayConfig
from fastgw.config.monitoring import MonitoringConfig
from fastgw.config.root import Config
from fastgw.config.paths import Path, render, show
from fastgw.config.walk import INVALID, Walker

_CONFIG_INFO = mi.type_info(Config)
_DEFAULTS = {"gateway": GatewayConfig, "monitoring": MonitoringConfig, "auth": lambda: None, "rate_limit": lambda: None}


def load_config(path: str | os.PathLike, env: Mapping[str, str] | None = None) -> tuple[Config, list[str]]:
    """Load and validate the config file at ``path``; returns ``(config, warnings)``."""
    try:
        text = FsPath(path).read_bytes()
    except OSError as e:
        raise ConfigError([f"{path}: cannot read the config file: {e.strerror or e}"], source=str(path)) from None
    return load_config_text(text, source=str(path), env=env)


def load_config_text(
    text: str | bytes, source: str = "<string>", env: Mapping[str, str] | None = None
) -> tuple[Config, list[str]]:
    """Load and validate config YAML; ``source`` names it in messages. ``env`` defaults to os.environ."""
    data, dups, node = _parse(text, source)
    try:
        return _load(data, source, env, dups)
    except ConfigError as e:
        e.where = locate_all(node, e.errors)
        raise


def parse_yaml(text: str | bytes, source: str = "<string>") -> Any:
    """Plain objects from YAML; ConfigError on a syntax error or duplicate keys."""
    data, dups, _ = _parse(text, source)
    if dups:
        raise ConfigError([f"{render(p)}: {m}" for p, m in dups], source=source)
    return data


def load_config_data(
    data: Any, source: str = "<data>", env: Mapping[str, str] | None = None
) -> tuple[Config, list[str]]:
    """Validate already-parsed config data (a dict as YAML would give)."""
    return _load(data, source, env, [])


def _parse(text: str | bytes, source: str) -> tuple[Any, list[tuple[Path, str]], Any]:
    """Plain objects, duplicate-key errors and the node tree; ConfigError on a syntax error."""
    data = text.encode() if isinstance(text, str) else text
    try:
        node = yaml.compose(data, Loader=yaml.CSafeLoader)
    except yaml.MarkedYAMLError as e:
        raise ConfigError([f"{source}: invalid YAML: {_yaml_problem(e)}"], source=source) from None
    except yaml.YAMLError as e:
        raise ConfigError([f"{source}: invalid YAML: {e}"], source=source) from None
    dups = _duplicate_keys(node, ()) if node is not None else []
    try:
        return _bool_keys(msgspec.yaml.decode(data)), dups, node
    except msgspec.DecodeError as e:
        msg = str(e).replace("<byte string>", source)
        raise ConfigError([f"{source}: invalid YAML: {msg}"], source=source) from None


def _bool_keys(data: Any) -> Any:
    """YAML 1.1 reads a plain ``on`` (``off``, ``yes``, ``no``) as a boolean, keys too: no
    config key is a boolean, and ``retry.on`` is a documented one, so a boolean key is
    given back as the word it must have been (True -> "on", False -> "off")."""
    if isinstance(data, dict):
        return {("on" if k else "off") if isinstance(k, bool) else k: _bool_keys(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_bool_keys(v) for v in data]
    return data


def _load(
    data: Any, source: str, env: Mapping[str, str] | None, found: list[tuple[Path, str]]
) -> tuple[Config, list[str]]:
    if data is None:
        raise ConfigError([f"{source}: the config is empty; expected a mapping with 'gateway' and 'services'"], source)
    if not isinstance(data, dict):
        raise ConfigError([f"{source}: expected a mapping at the top level, got {show(data)}"], source)
    found = list(found)
    warnings: list[str] = []

    def error(path: Path, msg: str) -> None:
        found.append((path, msg))

    def warn(path: Path, msg: str) -> None:
        warnings.append(f"{render(path) or source}: {msg}")

    data = substitute(data, os.environ if env is None else env, error)
    walker = Walker(record=pending.WATCHED | semantics.RECORD)
    config = walker.convert(_CONFIG_INFO, data, (), "")
    for path, msg in walker.errors:
        error(path, msg)

    recorded: dict[str, list[tuple[Path, Any]]] = {}
    for spath, path, value in walker.recorded:
        recorded.setdefault(spath, []).append((path, value))
    sections = {}
    for name, default in _DEFAULTS.items():
        if name in recorded:
            sections[name] = recorded[name][0][1]
        else:
            sections[name] = semantics.BROKEN if name in data else default()
    routes = recorded.get("services.*.routes[]", [])
    routes_complete = len(routes) == _count_routes(data.get("services"))
    semantics.crosscheck(
        sections,
        recorded.get("services.*", []),
        routes,
        routes_complete,
        error,
        warn,
    )
    raw = data
    found.sort(key=lambda e: _file_order(raw, e[0]))  # stable: same place keeps discovery order
    errors = [f"{render(path) or source}: {msg}" for path, msg in found]
    auth = sections["auth"]
    check_files = getattr(auth_schema, "check_files", None)
    if auth not in (None, semantics.BROKEN) and check_files is not None:
        errors.extend(check_files(auth))
        errors.extend(auth_schema.session_errors(auth, sections.get("rate_limit")))
        warnings.extend(auth_schema.session_warnings(auth))
    if errors or config is INVALID:
        raise ConfigError(errors, source=source)
    return semantics.finalize(config), pending.warnings_for(walker.recorded) + warnings


def _file_order(data: Any, path: Path) -> tuple[int, ...]:
    """Where ``path`` sits in the file: the position of each segment among its siblings."""
    key = []
    node = data
    for seg in path:
        if isinstance(node, dict):
            keys = [str(k) for k in node]
            if seg not in keys:
                key.append(len(keys))
                break
            key.append(keys.index(seg))
            node = list(node.values())[key[-1]]
        elif isinstance(node, list) and isinstance(seg, int) and seg < len(node):
            key.append(seg)
            node = node[seg]
        else:
            break
    return tuple(key)


def _count_routes(services: Any) -> int:
    """Routes in the raw data (-1 if the shape is too broken to say)."""
    if not isinstance(services, dict):
        return -1
    n = 0
    for svc in services.values():
        routes = svc.get("routes") if isinstance(svc, dict) else None
        if routes is not None and not isinstance(routes, list):
            return -1
        n += len(routes or ())
    return n


def _yaml_problem(e: yaml.MarkedYAMLError) -> str:
    parts = [p for p in (e.context, e.problem) if p]
    msg = ", ".join(parts) or "syntax error"
    mark = e.problem_mark or e.context_mark
    if mark is not None:
        msg += f" (line {mark.line + 1}, column {mark.column + 1})"
    return msg


def _duplicate_keys(node: yaml.Node, path: Path, seen_nodes: set[int] | None = None) -> list[tuple[Path, str]]:
    seen_nodes = set() if seen_nodes is None else seen_nodes
    if id(node) in seen_nodes:  # an alias: checked where its anchor is
        return []
    seen_nodes.add(id(node))
    out: list[tuple[Path, str]] = []
    if isinstance(node, yaml.MappingNode):
        lines: dict[str, int] = {}
        for k, v in node.value:
            if not isinstance(k, yaml.ScalarNode) or k.tag == "tag:yaml.org,2002:merge":
                continue
            if k.value in lines:
                msg = f"duplicate key (also on line {lines[k.value]}; YAML would keep only the last one)"
                out.append((path + (k.value,), msg))
            lines.setdefault(k.value, k.start_mark.line + 1)
            out += _duplicate_keys(v, path + (k.value,), seen_nodes)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            out += _duplicate_keys(v, path + (i,), seen_nodes)
    return out


# ---------------------------------------------------------------------- line and column
def _marks(node: Any, path: str, out: dict[str, tuple[int, int]]) -> None:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode):
                p = f"{path}.{k.value}" if path else str(k.value)
                out.setdefault(p, (k.start_mark.line + 1, k.start_mark.column + 1))
                _marks(v, p, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            p = f"{path}[{i}]"
            out.setdefault(p, (v.start_mark.line + 1, v.start_mark.column + 1))
            _marks(v, p, out)


def locate_all(node: Any, errors: list[str]) -> list[tuple[int, int] | None]:
    """``(line, column)`` (1-based) of each error's path in the file: the key itself, or
    the closest enclosing key when the path is not in the file (a missing field)."""
    marks: dict[str, tuple[int, int]] = {}
    if node is not None:
        _marks(node, "", marks)
    out: list[tuple[int, int] | None] = []
    for err in errors:
        p = err.split(": ", 1)[0]
        found = None
        while p:
            found = marks.get(p)
            if found is not None:
                break
            cut = max(p.rfind("."), p.rfind("["))
            p = p[:cut] if cut > 0 else ""
        out.append(found)
    return out
