"""Parsing HAProxy's runtime API answers (samples taken from HAProxy 2.6)."""

from __future__ import annotations

import pytest

from wsha.haproxy import (
    NodeEndpoint,
    RuntimeAPIError,
    parse_servers_state,
    parse_stat,
)

SERVERS_STATE = """1
# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight \
srv_iweight srv_time_since_last_change srv_check_status srv_check_result \
srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id \
srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr \
srv_agent_addr srv_agent_port
3 wsha_nodes 1 node1 127.0.0.1 2 4 1 1 3 15 3 3 6 0 0 0 - 18601 - 0 18602 - - 0
3 wsha_nodes 2 node2 127.0.0.1 2 12 1 1 3 15 3 3 6 0 0 0 - 18603 - 0 18604 - - 0
3 wsha_nodes 3 node3 127.0.0.1 0 5 1 1 8 1 0 0 14 0 0 0 - 18605 - 0 18606 - - 0
3 wsha_nodes 4 node4 0.0.0.0 0 5 1 1 8 1 0 0 14 0 0 0 - 0 - 0 0 - - 0

"""

STAT = (
    "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,"
    "eresp,wretr,wredis,status,weight,check_status,hrsp_5xx\n"
    "wsha,FRONTEND,,,2,3,8000,7,0,0,0,0,1,,,,,OPEN,,,4\n"
    "wsha_nodes,node1,0,0,2,2,,5,0,0,,0,,3,0,2,1,UP,1,L7OK,0\n"
    "\n"
)


def test_servers_state_gives_each_slot_and_its_state() -> None:
    """Each slot comes with address, ports and a state: up, drain, maint or free."""
    slots = parse_servers_state(SERVERS_STATE)

    assert [s.name for s in slots] == ["node1", "node2", "node3", "node4"]
    assert (slots[0].address, slots[0].port, slots[0].check_port) == (
        "127.0.0.1",
        18601,
        18602,
    )
    assert [s.state for s in slots] == ["up", "drain", "maint", "free"]
    assert [s.free for s in slots] == [False, False, False, True]
    assert [s.weight for s in slots] == [1, 1, 1, 1]


def test_servers_state_rejects_another_format() -> None:
    """An answer that is not format version 1 (e.g. an error) raises."""
    with pytest.raises(RuntimeAPIError):
        parse_servers_state("Unknown command.\n")


def test_stat_rows_carry_counters() -> None:
    """``show stat`` rows give sessions, errors, retries and health per proxy."""
    front, node = parse_stat(STAT)

    assert (front.proxy, front.name, front.status) == ("wsha", "FRONTEND", "OPEN")
    assert (front.current_sessions, front.total_sessions) == (2, 7)
    assert (front.request_errors, front.responses_5xx) == (1, 4)
    assert front.connection_errors == 0
    assert (node.connection_errors, node.retries, node.redispatches) == (3, 2, 1)
    assert node.check_status == "L7OK"


def test_stat_rejects_a_non_csv_answer() -> None:
    """An answer without the CSV header raises."""
    with pytest.raises(RuntimeAPIError):
        parse_stat("Permission denied\n")


def test_node_endpoint_needs_an_ip_and_valid_ports() -> None:
    """The runtime API takes no host names, and ports must be 1-65535."""
    NodeEndpoint("127.0.0.1", 8080, 8081)
    with pytest.raises(ValueError):
        NodeEndpoint("gateway-1", 8080, 8081)
    with pytest.raises(ValueError):
        NodeEndpoint("127.0.0.1", 0, 8081)
