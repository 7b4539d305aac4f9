"""The generic tool loop with a scripted model: valid and invalid steps, budgets, model errors."""

import jsonschema
import pytest
from scripted import ScriptedModel

from t2s.errors import IncompleteReply, ModelError
from t2s.models.base import ChatReply, Usage
from t2s.toolloop import LoopBudget, Tool, ToolFailure, describe_tools, run_tool_loop, step_schema

MESSAGES = [{"role": "system", "content": "sys"}, {"role": "user", "content": "task"}]


def tools(log):
    def add(args):
        log.append(args["a"] + args["b"])
        return f"sum is {args['a'] + args['b']}"

    def fail(args):
        raise ToolFailure("it broke", "details for the model")

    def crash(args):
        raise KeyError("boom")

    number = {"type": "integer"}
    return [
        Tool(
            "add",
            "Add two numbers.",
            {
                "type": "object",
                "properties": {"a": number, "b": number},
                "required": ["a", "b"],
                "additionalProperties": False,
            },
            add,
        ),
        Tool("fail", "Always fails.", {"type": "object", "properties": {}}, fail),
        Tool("crash", "Raises.", {"type": "object", "properties": {}}, crash),
        Tool(
            "finish",
            "Done.",
            {
                "type": "object",
                "properties": {"answer": {"type": "string"}},
                "required": ["answer"],
            },
            lambda args: "bye",
            finishes=True,
        ),
    ]


def step(tool, args, section="", thought="t"):
    return {"thought": thought, "section": section, "tool": tool, "args": args}


def test_valid_steps_run_tools_and_finish():
    log = []
    model = ScriptedModel(
        [step("add", {"a": 2, "b": 3}, "Totals"), step("finish", {"answer": "5"})]
    )
    result = run_tool_loop(model, MESSAGES, tools(log), LoopBudget(turns=10), sections=["Totals"])
    assert result.stopped == "finish" and result.finished
    assert result.final_args == {"answer": "5"}
    assert log == [5]
    assert [s.tool for s in result.steps] == ["add", "finish"]
    assert result.steps[0].ok and result.steps[0].observation == "sum is 5"
    assert result.steps[0].section == "Totals" and result.steps[0].turn == 1
    assert result.turns == 2
    # The conversation: the two given messages, then assistant/observation pairs.
    assert [m["role"] for m in result.messages] == ["system", "user"] + ["assistant", "user"] * 2
    assert "sum is 5" in result.messages[3]["content"]
    assert result.usage.prompt_tokens > 0 and result.usage.completion_tokens > 0
    # The model was asked under the step schema, with the reply token limit.
    options = model.calls[0][1]
    assert options.schema == step_schema(tools([]), ["Totals"])
    assert options.max_tokens == LoopBudget().reply_tokens


@pytest.mark.parametrize(
    "bad, expected",
    [
        ("this is not json", "not JSON"),
        ([1, 2], "expected a JSON object"),
        ({"thought": "t", "tool": "add", "args": {}}, "missing section"),
        ({**step("add", {"a": 1, "b": 2}), "extra": 1}, "unexpected key(s) extra"),
        (step("divide", {}), "unknown tool 'divide'"),
        (step("add", {"a": 1}), "'b' is a required property"),
        (step("add", {"a": "x", "b": 1}), "args/a: 'x' is not of type 'integer'"),
    ],
)
def test_an_invalid_step_costs_a_turn_and_the_model_is_told_why(bad, expected):
    log = []
    model = ScriptedModel([bad, step("add", {"a": 1, "b": 1}), step("finish", {"answer": "2"})])
    result = run_tool_loop(model, MESSAGES, tools(log), LoopBudget(turns=5))
    assert result.stopped == "finish"
    first = result.steps[0]
    assert not first.ok and first.tool == "" and expected in first.error
    assert expected in result.messages[3]["content"]
    assert "not a valid step" in result.messages[3]["content"]
    assert log == [2]  # the loop recovered and went on
    assert result.turns == 3


def test_failing_and_crashing_tools_fail_their_step_only():
    model = ScriptedModel([step("fail", {}), step("crash", {}), step("finish", {"answer": ""})])
    result = run_tool_loop(model, MESSAGES, tools([]), LoopBudget(turns=5))
    assert result.stopped == "finish"
    failed, crashed = result.steps[0], result.steps[1]
    assert not failed.ok and failed.error == "it broke"
    assert failed.observation == "details for the model"
    assert "it broke" in result.messages[3]["content"]
    assert "details for the model" in result.messages[3]["content"]
    assert not crashed.ok and crashed.error == "KeyError: 'boom'"


def test_a_failing_finish_does_not_end_the_loop():
    def refuse(args):
        raise ToolFailure("not yet")

    finish = Tool("finish", "Done.", {"type": "object"}, refuse, finishes=True)
    model = ScriptedModel([step("finish", {})])
    result = run_tool_loop(model, MESSAGES, [finish], LoopBudget(turns=3))
    assert result.stopped == "turns" and result.turns == 3
    assert all(not s.ok for s in result.steps)


def test_turn_budget():
    log = []
    model = ScriptedModel([step("add", {"a": 1, "b": 0})])
    result = run_tool_loop(model, MESSAGES, tools(log), LoopBudget(turns=4))
    assert result.stopped == "turns" and result.turns == 4
    assert len(model.calls) == 4 and log == [1, 1, 1, 1]


def test_token_budget_stops_before_the_next_call():
    class Costly(ScriptedModel):
        def chat(self, messages, options=None):
            reply = super().chat(messages, options)
            return ChatReply(reply.text, Usage(700, 100, 700), 0.0, self.name)

    model = Costly([step("add", {"a": 1, "b": 1})])
    result = run_tool_loop(model, MESSAGES, tools([]), LoopBudget(turns=50, tokens=2000))
    assert result.stopped == "tokens"
    assert result.turns == 3  # 800, 1600, 2400 >= 2000
    assert result.usage.prompt_tokens == 2100


def test_model_error_ends_the_loop_with_the_error_recorded():
    def broken(messages, options):
        raise ModelError("server unreachable")

    model = ScriptedModel([step("add", {"a": 1, "b": 1}), broken])
    result = run_tool_loop(model, MESSAGES, tools([]), LoopBudget(turns=5))
    assert result.stopped == "error" and result.error == "server unreachable"
    assert result.turns == 1 and len(result.steps) == 1


def test_a_reply_cut_off_at_the_token_limit_costs_a_turn_not_the_loop():
    def cut_off(messages, options):
        raise IncompleteReply("did not finish", Usage(100, 50, 100), 1.0)

    model = ScriptedModel([cut_off, step("finish", {"answer": "ok"})])
    result = run_tool_loop(model, MESSAGES, tools([]), LoopBudget(turns=5))
    assert result.stopped == "finish" and result.error in (None, "")
    assert result.turns == 2
    assert not result.steps[0].ok and "did not finish" in result.steps[0].error
    assert result.usage.completion_tokens >= 50
    assert "cut off" in model.calls[1][0][-1]["content"]


def test_long_observations_are_cut():
    big = Tool("big", "x", {"type": "object"}, lambda args: "a" * 5000 + "END")
    model = ScriptedModel([step("big", {}), step("finish", {"answer": ""})])
    finish = tools([])[-1]
    result = run_tool_loop(model, MESSAGES, [big, finish], LoopBudget(), observation_chars=1000)
    observation = result.steps[0].observation
    assert len(observation) < 1100 and observation.endswith("END") and "cut" in observation


def test_step_schema_accepts_exactly_the_valid_calls():
    schema = step_schema(tools([]), ["Totals"])
    jsonschema.validate(step("add", {"a": 1, "b": 2}, "Totals"), schema)
    jsonschema.validate(step("finish", {"answer": "x"}), schema)
    for bad in (
        step("add", {"a": 1, "b": 2}, "Not a section"),
        step("add", {"answer": "x"}),  # args of another tool
        step("nope", {}),
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
    assert step_schema(tools([]), None)["anyOf"][0]["properties"]["section"]["type"] == "string"


def test_describe_tools_shows_each_call():
    text = describe_tools(tools([]))
    assert '- add: Add two numbers. Call: {"tool": "add", "args": {"a": 0, "b": 0}}' in text
    assert text.count("\n") == 3
