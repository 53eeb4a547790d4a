"""nginx config rendering: the upstream (the ceiling) and the reference reverse proxy.

Rules:
  1. Both run from a private prefix in the run's work directory (pid file, temp paths,
     error log), in the foreground (``daemon off``), so no system nginx state is read
     or written and several benches can run side by side.
  2. The upstream is one worker: ``/small`` is ``return 200`` with a 100 B body,
     ``/slow`` answers after 20 ms through the echo module (``echo_sleep``), ``/16k``,
     ``/1m`` and ``/json16k`` (application/json, for gzip-json) are static files, ``/upload`` reads and discards a POST body of up to
     1 MiB and answers 100 B; ``stub_status`` on a second port counts the upstream's
     accepted connections (upstream connections opened by the proxy).
  3. The reference proxy is configured comparably to fastgw's bare route: one worker
     per fastgw worker, HTTP/1.1 upstream with a ``keepalive`` pool sized for the
     concurrency (a small pool makes nginx open tens of thousands of upstream
     connections at 256+ clients and halves its throughput), a request id set upstream
     and echoed downstream, X-Forwarded-For, and a buffered access log.  Request bodies
     stream (``proxy_request_buffering off``, as fastgw streams); response buffering
     stays on but never spills to disk (``proxy_max_temp_file_size 0``).
  4. Keep-alive connections are never recycled by count (``keepalive_requests``), so
     every upstream connection opened in steady state is a real pool miss.
"""

from __future__ import annotations

import os
import re
import subprocess
import urllib.request
from pathlib import Path

from bench.scenarios import SIZE_1M, SIZE_16K, SMALL_BODY, json_16k

ECHO_MODULE_PATHS = (
    "/usr/lib/nginx/modules/ngx_http_echo_module.so",
    "/usr/share/nginx/modules/ngx_http_echo_module.so",
)


def binary() -> str | None:
    for path in ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"):
        if os.access(path, os.X_OK):
            return path
    return None


def echo_module() -> str | None:
    return next((p for p in ECHO_MODULE_PATHS if os.path.exists(p)), None)


def version() -> str:
    nginx = binary()
    if not nginx:
        return "missing"
    out = subprocess.run([nginx, "-v"], capture_output=True, text=True).stderr
    m = re.search(r"nginx/(\S+)", out)
    return m.group(1) if m else out.strip()


def _prelude(prefix: Path, workers: int, connections: int) -> str:
    """Main context shared by both configs (rule 1)."""
    user = "user root;\n" if os.geteuid() == 0 else ""
    return f"""{user}worker_processes {workers};
daemon off;
master_process on;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
worker_rlimit_nofile {max(8192, connections * 4)};
events {{ worker_connections {max(4096, connections * 3)}; }}
"""


def _http_common(prefix: Path) -> str:
    return f"""    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    server_tokens off;
"""


def write_static_files(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "16k").write_bytes(b"x" * SIZE_16K)
    (root / "1m").write_bytes(b"y" * SIZE_1M)
    (root / "json16k").write_bytes(json_16k())


def upstream_conf(prefix: Path, port: int, status_port: int, echo: str | None) -> str:
    """The native upstream (rule 2)."""
    body = SMALL_BODY.decode().rstrip("\n")
    load = f"load_module {echo};\n" if echo else ""
    slow = (
        f'echo_sleep 0.02; echo "{body}";' if echo else 'return 501 "echo module missing";'
    )
    return f"""{load}{_prelude(prefix, 1, 2048)}
http {{
{_http_common(prefix)}    access_log off;
    sendfile on;
    tcp_nopush on;
    default_type text/plain;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        # (the lb4 scenario's other instances: the same server on three more addresses)
        listen 127.0.0.2:{port} backlog=4096;
        listen 127.0.0.3:{port} backlog=4096;
        listen 127.0.0.4:{port} backlog=4096;
        root {prefix}/static;
        location = /small {{ return 200 "{body}\\n"; }}
        location = /cached {{ add_header Cache-Control "max-age=3600"; return 200 "{body}\\n"; }}
        location = /slow {{ {slow} }}
        location = /16k {{ }}
        location = /1m {{ }}
        location = /json16k {{ default_type application/json; }}
        location = /upload {{
            client_max_body_size 1m;
            client_body_buffer_size 128k;
            return 200 "{body}\\n";
        }}
    }}
    server {{
        listen 127.0.0.1:{status_port};
        location / {{ stub_status; }}
    }}
}}
"""


def proxy_conf(prefix: Path, port: int, upstream_port: int, workers: int, connections: int,
               gzip_level: int = 0, cache: bool = False) -> str:
    """The reference reverse proxy (rules 3-4); ``gzip_level`` > 0 turns on ``gzip`` for
    JSON responses at that ``gzip_comp_level`` (the gzip-json scenario), configured as
    fastgw's compression is: proxied responses too, 1 KiB minimum, ``Vary`` added."""
    pool = max(1024, connections)
    gz = (f"    gzip on;\n    gzip_comp_level {gzip_level};\n    gzip_types application/json;\n"
          f"    gzip_proxied any;\n    gzip_min_length 1024;\n    gzip_vary on;\n") if gzip_level else ""
    reuse = " reuseport" if workers > 1 else ""
    # the cache-hit scenario: proxy_cache with its files on tmpfs (/dev/shm), so a hit
    # costs nginx no disk I/O, as fastgw's in-memory hits cost none
    pc = (f"    proxy_cache_path /dev/shm/fastgw-bench-nginx-cache-{os.getpid()} levels=1:2 "
          f"keys_zone=bench:10m max_size=256m inactive=1h use_temp_path=off;\n") if cache else ""
    pcl = ("            proxy_cache bench;\n            proxy_cache_lock on;\n"
           "            add_header X-Cache-Status $upstream_cache_status always;\n") if cache else ""
    return f"""{_prelude(prefix, workers, connections)}
http {{
{_http_common(prefix)}    log_format bench escape=json '{{"ts":"$time_iso8601","request_id":"$request_id",'
        '"client_ip":"$remote_addr","method":"$request_method","path":"$uri","status":$status,'
        '"bytes_sent":$bytes_sent,"duration_s":$request_time,"upstream":"$upstream_addr",'
        '"upstream_status":"$upstream_status","upstream_duration_s":"$upstream_response_time"}}';
    access_log {prefix}/access.log bench buffer=64k flush=1s;
{gz}{pc}    upstream bench {{
        server 127.0.0.1:{upstream_port};
        keepalive {pool};
        keepalive_requests 1000000;
        keepalive_timeout 75s;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096{reuse};
        client_max_body_size 10m;
        location / {{
            proxy_pass http://bench;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Request-ID $request_id;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            add_header X-Request-ID $request_id always;
            proxy_request_buffering off;
            proxy_buffering on;
            proxy_max_temp_file_size 0;
{pcl}        }}
    }}
}}
"""


def command(prefix: Path, conf: Path) -> list[str]:
    return [binary() or "nginx", "-p", f"{prefix}/", "-e", f"{prefix}/error.log", "-c", str(conf)]


def accepts(status_port: int) -> int:
    """The upstream's accepted-connections counter, this request's own connection included.

    Between two reads, connections opened by others = second - first - 1.
    """
    with urllib.request.urlopen(f"http://127.0.0.1:{status_port}/", timeout=5) as r:
        text = r.read().decode()
    # "Active connections: N \nserver accepts handled requests\n A H R \n..."
    return int(text.splitlines()[2].split()[0])
