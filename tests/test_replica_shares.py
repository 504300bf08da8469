"""Per-bin replica shares expose a router that sends a stretch of requests to one replica."""

import gzip
import json

from loadtests.jsonl import read_jsonl
from loadtests.replica_shares import main, replica_shares


def _req(t: float, replica: str | None) -> dict:
    return {"t_sched": t, "replica": replica}


def test_an_even_spread_has_a_largest_share_of_one_half():
    rows = replica_shares([_req(0.1, "a"), _req(0.2, "b"), _req(1.1, "a"), _req(1.2, "b")], bin_s=1.0)
    assert [r["largest_share"] for r in rows] == [0.5, 0.5]


def test_a_stretch_sent_to_one_replica_shows_as_a_share_of_one_in_its_bin():
    recs = [_req(0.5, "a"), _req(0.6, "b"), _req(5.1, "b"), _req(5.2, "b"), _req(5.3, None)]
    rows = replica_shares(recs, bin_s=5.0)
    assert rows[1]["requests"] == {"a": 0, "b": 2, "none": 1}
    assert rows[1]["largest_share"] == 1.0


def test_a_bin_where_nothing_reached_a_replica_has_no_share():
    rows = replica_shares([_req(0.5, "a"), _req(7.0, None)], bin_s=5.0)
    assert rows[1]["largest_share"] is None


def test_the_command_reads_a_gzipped_requests_file(tmp_path, capsys):
    path = tmp_path / "requests.jsonl.gz"
    with gzip.open(path, "wt") as f:
        for r in [_req(0.5, "a"), _req(0.7, "b")]:
            f.write(json.dumps(r) + "\n")
    assert len(read_jsonl(path)) == 2
    assert main([str(path)]) == 0
    assert "0.50" in capsys.readouterr().out
