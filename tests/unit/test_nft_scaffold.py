"""What install records of the nf_tables scaffold iptables-nft made (pure: save texts in, lists out)."""
from engine.iptables import live, nft_scaffold

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


def _nat_listing(*extra_rules: dict) -> list[dict]:
    """`nft -j list table ip nat` after our install, as objects (metainfo dropped)."""
    return [{"table": {"family": "ip", "name": "nat"}},
            {"chain": {"table": "nat", "name": "PREROUTING", "type": "nat", "hook": "prerouting"}},
            {"chain": {"table": "nat", "name": "OUTPUT", "type": "nat", "hook": "output"}},
            {"chain": {"table": "nat", "name": "TPCTL_OUTBOUND"}},
            {"rule": {"table": "nat", "chain": "OUTPUT", "expr": [{"jump": {"target": "TPCTL_OUTBOUND"}}]}},
            {"rule": {"table": "nat", "chain": "TPCTL_OUTBOUND", "expr": [{"return": None}]}},
            *extra_rules]


CREATED = {("nat", "PREROUTING"), ("nat", "OUTPUT")}
OURS = live.Owned(rules=(("nat", "OUTPUT", 1, "-p tcp -j TPCTL_OUTBOUND"),),
                  chains=(("nat", "TPCTL_OUTBOUND", ("-j RETURN",)),))


def test_after_our_rules_went_the_scaffold_install_created_goes():
    after = [o for o in _nat_listing() if "TPCTL_OUTBOUND" not in str(o)]
    assert nft_scaffold.what_goes(after, "nat", CREATED, True) == (["OUTPUT", "PREROUTING"], True)


def test_a_dry_run_counts_our_rules_and_chains_as_gone_already():
    # without them the dry run would say nothing goes, and then the real uninstall deletes the table
    assert nft_scaffold.what_goes(_nat_listing(), "nat", CREATED, True) == (["PREROUTING"], False)
    assert nft_scaffold.what_goes(_nat_listing(), "nat", CREATED, True, OURS) == (["OUTPUT", "PREROUTING"], True)


def test_another_tools_rule_set_or_pre_existing_table_keeps_it():
    theirs = {"rule": {"table": "nat", "chain": "OUTPUT", "expr": [{"return": None}]}}
    assert nft_scaffold.what_goes(_nat_listing(theirs), "nat", CREATED, True, OURS) == (["PREROUTING"], False)
    a_set = {"set": {"table": "nat", "name": "blocked", "type": "ipv4_addr"}}
    assert nft_scaffold.what_goes(_nat_listing(a_set), "nat", CREATED, True, OURS) == (["OUTPUT", "PREROUTING"],
                                                                                     False)
    assert nft_scaffold.what_goes(_nat_listing(), "nat", CREATED, False, OURS) == (["OUTPUT", "PREROUTING"], False)
