"""What install records of the nf_tables scaffold iptables-nft made (pure: save texts in, lists out)."""
from engine.iptables import live, nft_scaffold
from engine.iptables.rules import Rule, TablePlan

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


NAT = TablePlan("nat", ("TPCTL_OUTBOUND",), (Rule("OUTPUT", "TPCTL_OUTBOUND", protocol="tcp"),
                                              Rule("PREROUTING", "RETURN", protocol="tcp")))


def test_created_names_new_tables_and_base_chains_but_not_ours_or_what_was_there():
    created = nft_scaffold.created(nft_scaffold.from_save(BEFORE), nft_scaffold.from_save(AFTER), [NAT])
    assert created == {"tables": ["nat"], "chains": [["nat", "OUTPUT"], ["nat", "PREROUTING"]]}


def test_nothing_is_created_when_everything_was_there():
    after = nft_scaffold.from_save(AFTER)
    assert nft_scaffold.created(after, after, [NAT]) == {"tables": [], "chains": []}


def test_what_another_tool_creates_meanwhile_is_not_recorded_as_ours():
    # a chain our rules do not use, and a table not in the plan, appearing between the two views
    after = nft_scaffold.from_save(AFTER + "*filter\n:FORWARD ACCEPT [0:0]\nCOMMIT\n*mangle\n:INPUT ACCEPT [0:0]\nCOMMIT\n")
    before = (nft_scaffold.from_save(BEFORE)[0] - {"filter"}, nft_scaffold.from_save(BEFORE)[1])
    assert nft_scaffold.created(before, after, [NAT]) == {"tables": ["nat"],
                                                          "chains": [["nat", "OUTPUT"], ["nat", "PREROUTING"]]}


def test_expected_counts_only_the_chains_nf_tables_really_has():
    # iptables-nft-save prints PREROUTING for a raw table that nft shows with OUTPUT only
    raw = TablePlan("raw", (), (Rule("PREROUTING", "CT", protocol="udp"),))
    view = (frozenset({"raw"}), frozenset({("raw", "OUTPUT")}))
    assert nft_scaffold.expected(view, [raw]) == {"tables": [], "chains": [["raw", "PREROUTING"]]}
    assert nft_scaffold.expected(nft_scaffold.from_save("*raw\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n"), [raw]) == {
        "tables": [], "chains": []}
    # a table install creates is install's with every built-in chain iptables-nft may make in it
    assert nft_scaffold.expected((frozenset(), frozenset()), [raw]) == {
        "tables": ["raw"], "chains": [["raw", "OUTPUT"], ["raw", "PREROUTING"]]}


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
