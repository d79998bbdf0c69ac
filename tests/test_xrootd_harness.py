import uproot

from tests.support.xrootd import render_proxy_config


def test_origin_direct_proxy_and_forwarding_proxy_serve_the_same_tree(xrootd, sample_files):
    name = xrootd.add_file(sample_files["signal"], "harness/signal.root")
    expected = uproot.open(sample_files["signal"])["Events"]["MET_pt"].array(library="np")
    for url in (xrootd.origin_url(name), xrootd.proxy_url(name), xrootd.forwarding_url(name)):
        with uproot.open(url) as f:
            values = f["Events"]["MET_pt"].array(library="np")
        assert (values == expected).all(), url


def test_proxy_template_renders_cache_and_forwarding_modes():
    forwarding = render_proxy_config(xrootd_proxy_mode="forwarding")
    assert "pss.origin =" in forwarding
    cached = render_proxy_config(xrootd_proxy_origin="eos.example.org:1094", xrootd_proxy_cache_enabled=True)
    assert "pss.origin eos.example.org:1094" in cached
    assert "pss.cachelib libXrdPfc.so" in cached
    assert "pfc.diskusage 0.9 0.95" in cached
