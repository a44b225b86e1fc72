"""The planner's tables: tutorials' memory claims and the best method per GPU (course_lib.memory.tables)."""

from __future__ import annotations

from course_lib import memory


def test_claims_and_recommendations_tables():
    rows = memory.claims()
    assert {r["claim"] for r in rows} == {"7B fits in 24 GB with QLoRA", "13B needs 40 GB or more",
                                          "7B fine-tuning in only 6 GB"}
    assert all(r["verdict"] for r in rows)
    full13 = memory.estimate("llama-2-13b", "full", 512, 1, True, device="cuda")
    assert full13.total_mb > 80 * 1024  # no single 80 GB GPU fully fine-tunes 13B
    q7 = memory.estimate("qwen2.5-7b", "qlora", 512, 1, True, device="cuda")
    assert q7.total_mb < 24 * 1024
    table = {r["model"]: r for r in memory.recommend(this_machine_mb=24 * 1024)}
    assert table["smollm2-135m"]["T4 15 GB"].startswith("full")
    assert table["llama-2-13b"]["T4 15 GB"].startswith("qlora")
    assert table["llama-2-13b"]["80 GB"].startswith("lora")
