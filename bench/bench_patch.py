"""How fast patches apply and skills validate (consolidation applies hundreds of patches).

Run: .venv/bin/python bench/bench_patch.py
"""

import time
from pathlib import Path

from t2s import skill as skill_module
from t2s.patch import Edit, Patch, apply_patch
from t2s.skill import Skill, validate_skill

STARTER = Path(__file__).resolve().parent.parent / "t2s" / "starter_skill"


ANCHOR = ("1. Read the instruction twice. Note the sheet, the answer range and the exact output "
          "asked for.")


def patches(count: int) -> list[Patch]:
    """Distinct four-edit patches, so no parse cache hides the work; one in three quotes its
    anchor partly (a reported fuzzy match)."""
    made = []
    for n in range(count):
        made.append(Patch(f"reason {n}", [f"lesson {n}"], [
            Edit("append_to_section", section="Writing answers",
                 content=f"- Lesson {n}: write values, not display strings."),
            Edit("insert_after", anchor=ANCHOR if n % 3 else "1. Read the instruction twice.",
                 content=f"   Note {n}: list the answer cells."),
            Edit("add_section", section=f"Case {n}",
                 content=f"See [notes {n}](references/case-{n}.md)."),
            Edit("create_file", file=f"references/case-{n}.md", content=f"# Case {n}\n\nDetail."),
        ]))
    return made


def timed(label: str, count: int, work) -> None:
    start = time.perf_counter()
    work()
    seconds = time.perf_counter() - start
    print(f"{label:<48} {count:>5} x  {1000 * seconds / count:7.2f} ms each  ({seconds:.2f} s)")


def main() -> None:
    skill = Skill.from_dir(STARTER)
    count = 300
    batch = patches(count)
    print(f"starter skill: {len(skill.files)} files, "
          f"{len(skill.files['SKILL.md'].splitlines())} lines in SKILL.md")
    results = []
    timed("apply_patch (4 edits, all applied)", count,
          lambda: results.extend(apply_patch(skill, patch) for patch in batch))
    assert all(len(r.applied) == 4 for r in results), "every edit should apply"
    fuzzy = sum(1 for r in results if r.notes)
    print(f"  {fuzzy} of {count} patches used a reported fuzzy anchor")
    broken = [
        Patch("r", [], [Edit("append_to_section", section="Workflow", content=f"x{n}\n" * 460)]
              + patch.edits)
        for n, patch in enumerate(batch)
    ]
    timed("apply_patch (5 edits, one refused for length)", count,
          lambda: [apply_patch(skill, patch) for patch in broken])
    grown = [r.skill for r in results]
    for parse in (skill_module._parse_front_matter, skill_module._parse_sections,
                  skill_module._parse_links):
        parse.cache_clear()  # measure parsing too, not only cache hits
    timed("validate_skill (patched skills, cold cache)", count,
          lambda: [validate_skill(s, base=skill) for s in grown])
    timed("validate_skill (same skills, warm cache)", count,
          lambda: [validate_skill(s, base=skill) for s in grown])


if __name__ == "__main__":
    main()
