"""The dashboard of a cluster with a token: the links the cluster and client hand out log a
browser in; without the token the API refuses."""

from __future__ import annotations

import http.cookiejar
import urllib.error
import urllib.request

import pytest

from shoal import Client, LocalCluster

from conftest import needs_binary

pytestmark = needs_binary


def test_dashboard_links_carry_the_token() -> None:
    with LocalCluster(n_workers=1) as cluster, Client(cluster) as client:
        assert cluster.token and cluster.token in cluster.dashboard_link
        base = cluster.dashboard_link.split("?")[0]
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(base + "api/v1/workers", timeout=10)
        assert exc.value.code == 401
        for link in (cluster.dashboard_link, client.dashboard_link):
            jar = http.cookiejar.CookieJar()
            browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
            with browser.open(link, timeout=10) as page:
                assert page.status == 200
                assert "token=" not in page.url and "/login" not in page.url
            with browser.open(base + "api/v1/workers", timeout=10) as api:
                assert api.status == 200
