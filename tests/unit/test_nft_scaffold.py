"""What install records of the nf_tables scaffold iptables-nft made (pure: save texts in, lists out)."""
from engine.iptables import nft_scaffold

BEFORE = """*filter
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -s 198.18.0.9/32 -j DROP
COMMIT
"""
AFTER = BEFORE + """*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:TPCTL_OUTBOUND - [0:0]
-A OUTPUT -p tcp -j TPCTL_OUTBOUND
COMMIT
"""


def test_created_names_new_tables_and_base_chains_but_not_ours_or_what_was_there():
    created = nft_scaffold.created(BEFORE, AFTER, ours={("nat", "TPCTL_OUTBOUND")})
    assert created == {"tables": ["nat"], "chains": [["nat", "OUTPUT"], ["nat", "PREROUTING"]]}


def test_nothing_is_created_when_everything_was_there():
    assert nft_scaffold.created(AFTER, AFTER, ours=set()) == {"tables": [], "chains": []}


def test_merge_keeps_what_earlier_installs_created():
    first = {"tables": ["nat"], "chains": [["nat", "OUTPUT"]]}
    second = {"tables": ["raw"], "chains": [["nat", "OUTPUT"], ["raw", "PREROUTING"]]}
    assert nft_scaffold.merge(first, None, second) == {
        "tables": ["nat", "raw"], "chains": [["nat", "OUTPUT"], ["raw", "PREROUTING"]]}
