from collections import Counter

import pytest
from click.testing import CliRunner

from factory.cli.main import cli
from factory.core.errors import FactoryError
from factory.core.quota import largest_remainder
from factory.generate.plans import AttributeAxis, PlanConfig, build_plan, read_plan, row_seed, write_plan

CLASSES = [str(i) for i in range(10)]
COLOR = AttributeAxis.make("color", ["red", "green", "blue"], [3, 1, 1])


def test_largest_remainder_is_exact():
    assert largest_remainder(10, [1, 1, 1]) == [4, 3, 3]
    assert largest_remainder(7, [0.6, 0.2, 0.2]) == [4, 2, 1]
    for total in range(0, 50):
        q = largest_remainder(total, [3, 1, 1])
        assert sum(q) == total and all(abs(x - total * w / 5) < 1 for x, w in zip(q, [3, 1, 1]))


def test_exact_quotas_per_class_and_cell():
    cfg = PlanConfig(images_per_class=20, images_per_prompt=3, attributes=(COLOR,),
                     templates=("a {color} digit {class_name}", "a photo of a {class_name}"))
    plan = build_plan(cfg, CLASSES)
    assert len(plan.rows) == 200
    cells = Counter((r.class_name, r.attributes["color"]) for r in plan.rows)
    for c in CLASSES:
        assert (cells[(c, "red")], cells[(c, "green")], cells[(c, "blue")]) == (12, 4, 4)
    groups = Counter(r.group for r in plan.rows)
    assert max(groups.values()) == 3
    by_group = {}
    for r in plan.rows:  # one prompt per group, different seeds
        by_group.setdefault(r.group, set()).add(r.text)
    assert all(len(t) == 1 for t in by_group.values())
    assert len({r.seed for r in plan.rows}) == 200 and len({r.key for r in plan.rows}) == 200
    red = next(r for r in plan.rows if r.attributes["color"] == "red" and r.template.startswith("a {color}"))
    assert red.text == f"a red digit {red.class_name}"
    assert plan.header["target"]["attributes"]["color"] == {"red": 0.6, "green": 0.2, "blue": 0.2}


def test_growing_the_plan_keeps_existing_rows():
    small = build_plan(PlanConfig(images_per_class=8, images_per_prompt=4, attributes=(COLOR,),
                                  classes=("1", "2")), CLASSES)
    big = build_plan(PlanConfig(images_per_class=20, images_per_prompt=4, attributes=(COLOR,),
                                classes=("1", "2", "7")), CLASSES)
    big_rows = {r.key: r for r in big.rows}
    for r in small.rows:
        assert big_rows[r.key] == r
    other_seed = build_plan(PlanConfig(images_per_class=8, images_per_prompt=4, attributes=(COLOR,),
                                       classes=("1", "2"), seed=1), CLASSES)
    assert [r.key for r in other_seed.rows] == [r.key for r in small.rows]
    assert all(a.seed != b.seed for a, b in zip(other_seed.rows, small.rows))
    assert small.rows[0].seed == row_seed(0, small.rows[0].key)


def test_oversample_and_subset():
    plan = build_plan(PlanConfig(images_per_class=10, oversample=1.5, classes=("3",)), CLASSES)
    assert len(plan.rows) == 15 and {r.label for r in plan.rows} == {3}
    assert plan.header["target"]["images_per_class"] == 10


@pytest.mark.parametrize("kwargs, match", [
    ({"images_per_class": 0}, r"plan.images_per_class: must be > 0 \(got 0\)"),
    ({"images_per_class": 2.5}, r"plan.images_per_class: must be an integer \(got 2.5\)"),
    ({"images_per_class": -3}, "images_per_class"),
    ({"images_per_class": 5, "images_per_prompt": 0}, "images_per_prompt"),
    ({"images_per_class": 5, "templates": ("a {colour} {class_name}",)}, "plan.templates: .* unknown field"),
    ({"images_per_class": 5, "templates": ()}, "plan.templates: must hold at least 1 item"),
    ({"images_per_class": 5, "bogus": 1}, "plan.bogus: unknown parameter"),
    ({"images_per_class": 5, "classes": ("11",)}, "unknown class"),
    ({"images_per_class": 5, "oversample": 0.5}, "oversample"),
])
def test_bad_plans_fail_early(kwargs, match):
    with pytest.raises(FactoryError, match=match):
        build_plan(PlanConfig(**kwargs), CLASSES)


@pytest.mark.timeout(20)
@pytest.mark.parametrize("template, shown", [
    ("a handwritten {class_name:>2000000}", "{class_name:>2000000}"),  # built huge rows for >25 s
    ("a handwritten {class_name:>999999999999999999}", "{class_name:>999999999999999999}"),  # MemoryError
    ("a {class_name!r}", "{class_name!r}"),
    ("a {class_name!s:^9}", "{class_name!s:^9}"),
    ("a {class_name:{color}}", "{class_name:{color}}"),
    ("a {class_name.__class__}", "{class_name.__class__}"),
    ("a {color[0]} {class_name}", "{color[0]}"),
    ("a {} digit", "{}"),
    ("a {0} digit", "{0}"),
])
def test_templates_take_plain_placeholders_only(tmp_path, template, shown):
    with pytest.raises(FactoryError) as info:
        build_plan(PlanConfig(images_per_class=5, attributes={"color": ["red"]}, templates=(template,)), CLASSES)
    assert "plan.templates" in str(info.value) and shown in str(info.value)
    assert len(str(info.value).splitlines()) == 1
    params = tmp_path / "params.yaml"
    params.write_text(f"plan:\n  images_per_class: 2\n  attributes: {{color: [red]}}\n  templates: [{template!r}]\n")
    r = CliRunner().invoke(cli, ["prompts", "build", str(params), str(tmp_path / "p.jsonl")])
    assert r.exit_code == 2 and r.stderr.count("\n") == 1, r.output
    assert r.stderr.startswith("Error: ") and "plan.templates" in r.stderr and shown in r.stderr
    assert not (tmp_path / "p.jsonl").exists()


def test_bad_attribute_axes():
    with pytest.raises(FactoryError, match="weights"):
        AttributeAxis.make("color", ["a", "b"], [1])
    with pytest.raises(FactoryError, match="positive sum"):
        AttributeAxis.make("color", ["a", "b"], [0, 0])


def test_write_read_round_trip(tmp_path):
    plan = build_plan(PlanConfig(images_per_class=5, attributes=(COLOR,)), CLASSES)
    write_plan(plan, tmp_path / "p.jsonl")
    again = read_plan(tmp_path / "p.jsonl")
    assert again.rows == plan.rows and again.sha256() == plan.sha256()
    (tmp_path / "bad.jsonl").write_text('{"rows": 1}\n')
    with pytest.raises(FactoryError, match="not a prompt plan"):
        read_plan(tmp_path / "bad.jsonl")


def test_cli_build_and_show(tmp_path, digits):
    params = tmp_path / "params.yaml"
    params.write_text(f"""
plan:
  dataset: {digits}
  images_per_class: 6
  images_per_prompt: 2
  templates: ["a {{color}} {{class_name}}"]
  attributes:
    color: {{values: [red, blue], weights: [2, 1]}}
""")
    r = CliRunner().invoke(cli, ["prompts", "build", str(params), str(tmp_path / "plan.jsonl")])
    assert r.exit_code == 0, r.output
    assert len(read_plan(tmp_path / "plan.jsonl").rows) == 60
    r = CliRunner().invoke(cli, ["prompts", "show", str(tmp_path / "plan.jsonl")])
    lines = r.output.splitlines()
    assert "color_red" in lines[0] and "color_blue" in lines[0]
    assert lines[1].split() == ["0", "4", "2", "6"]
    assert lines[11].split()[:3] == ["target", "66.7%", "33.3%"]
    params.write_text("plan:\n  images_per_class: -1\n")
    r = CliRunner().invoke(cli, ["prompts", "build", str(params), str(tmp_path / "p2.jsonl")])
    assert r.exit_code == 2 and "plan.images_per_class" in r.stderr
