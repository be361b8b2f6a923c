"""The bundled sample: what `crawl2model run` curates when no input is given. Works offline.

    from flows.sample import prepare_sample
    urls_txt = prepare_sample(cfg)     # <root>/sample/urls.txt, already crawled into <root>/crawl/

The project makes it on the machine: `tasks.sample_site` renders the docstrings of installed
packages as article pages, they are served on 127.0.0.1, and the URL list is crawled through the
same path as any user's URL list (robots.txt honoured, WARC files written under the data root;
127.0.0.1 is reached through an allow-list entry for the server's port, not a hole in the check).
The curate flow then finds that crawl in its cache. Once made, the sample is reused as it is,
so a second `crawl2model run` is a no-op.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from pathlib import Path
from urllib.parse import urlsplit

from prefect import task
from prefect.cache_policies import NONE
from rich.console import Console

from crawl2model.config import Config
from crawl2model.layout import DataRoot
from flows.progress import progress_bar
from tasks.crawl import cached_crawl, load_or_crawl, read_url_list
from tasks.sample_site import build_site, page_urls, serve_site


@task(name="bundled-sample", cache_policy=NONE)
def prepare_sample(cfg: Config, show_progress: bool = True) -> Path:
    home = DataRoot(cfg.data_root).sample
    urls_file = home / "urls.txt"
    if urls_file.exists() and cached_crawl(read_url_list(urls_file), DataRoot(cfg.data_root).crawl_cache, cfg.curate.crawl):
        return urls_file
    building = "building the bundled sample from installed packages' docstrings"
    with Console(stderr=True).status(building) if show_progress else nullcontext():
        site = build_site(home / "site", cfg.sample.packages, cfg.sample.max_mb)
    with serve_site(site.root) as base_url:
        # Our own server on loopback: no politeness delay, and an explicit allow-list entry for
        # exactly this address and port (the crawler refuses loopback otherwise).
        port = urlsplit(base_url).port
        crawl_cfg = cfg.curate.crawl.model_copy(update={
            "delay_seconds": 0.0, "per_host_concurrency": 8, "allow": [*cfg.curate.crawl.allow, f"127.0.0.1:{port}"]})
        urls = page_urls(site, base_url) + [base_url + "private/drafts.html"]  # robots.txt refuses the last
        tmp = urls_file.with_suffix(".tmp")
        tmp.write_text("# crawl2model bundled sample\n" + "\n".join(urls) + "\n", encoding="utf-8")
        os.replace(tmp, urls_file)
        with progress_bar("crawl sample", total=len(urls), enabled=show_progress) as advance:
            done = [0]

            def progress(n: int, total: int) -> None:
                advance(n - done[0])
                done[0] = n

            load_or_crawl(urls, DataRoot(cfg.data_root).crawl_cache, crawl_cfg, progress)
    return urls_file
