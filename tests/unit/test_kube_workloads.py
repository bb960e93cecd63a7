"""Reading Kueue's Workload objects as the operator's waiting message shows them."""

from __future__ import annotations

from palimpsest_operator.kube import workload_view


def test_a_workload_names_itself_and_why_it_waits() -> None:
    workload = {
        "metadata": {"name": "job-sgcr-1-ab12c", "labels": {"kueue.x-k8s.io/job-uid": "u"}},
        "status": {
            "conditions": [
                {"type": "Admitted", "status": "False", "message": "not yet"},
                {"type": "QuotaReserved", "status": "False", "message": "insufficient quota"},
            ]
        },
    }
    view = workload_view(workload)
    assert (view.name, view.message) == ("job-sgcr-1-ab12c", "insufficient quota")


def test_a_workload_kueue_has_not_looked_at_has_no_message() -> None:
    assert workload_view({"metadata": {"name": "job-x-1"}}).message == ""
