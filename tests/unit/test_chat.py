"""The chat loop with a tiny hand-built model and a merge-free byte tokenizer: known outputs."""

from __future__ import annotations

import io

import torch
from torch import nn

from minillm_cli import chat
from minillm_core import inference
from minillm_core.inference import SamplingParams
from minillm_core.tokenizer import Tokenizer


def byte_tokenizer() -> Tokenizer:
    return Tokenizer({bytes([b]): b for b in range(256)})


class Script(nn.Module):
    """Greedy output fixed by a script: after `<|assistant_start|>` it spells `reply` byte by byte,
    then `<|assistant_end|>`. Counts its forward calls."""

    def __init__(self, tok: Tokenizer, reply: str):
        super().__init__()
        self.tok, self.reply = tok, list(reply.encode("utf-8"))
        self.start = tok.encode_special("<|assistant_start|>")
        self.end = tok.encode_special("<|assistant_end|>")
        self.contexts: list[list[int]] = []

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        v = self.tok.get_vocab_size()
        logits = torch.zeros(*ids.shape, v)
        seq = ids[0].tolist()
        # How far into the current answer are we? Count tokens after the last assistant_start.
        k = len(seq) - 1 - max(i for i, t in enumerate(seq) if t == self.start)
        if k == 0:
            self.contexts.append(seq)
        nxt = self.reply[k] if k < len(self.reply) else self.end
        logits[0, -1, nxt] = 10.0
        return logits


def test_multi_turn_streams_and_keeps_history():
    tok = byte_tokenizer()
    model = Script(tok, "你好！")
    out = io.StringIO()
    conv = chat.chat_loop(
        model,
        tok,
        temperature=0.0,
        max_new_tokens=32,
        max_context=512,
        stdin=io.StringIO("hi\n\nagain\n/quit\nnever read\n"),
        stdout=out,
    )
    assert out.getvalue() == "assistant: 你好！\nassistant: 你好！\n"
    assert conv == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "你好！"},
        {"role": "user", "content": "again"},
        {"role": "assistant", "content": "你好！"},
    ]
    # The second turn saw the first exchange, rendered with the chat template.
    assert model.contexts[1] == tok.render_for_completion(conv[:3])


def test_clear_starts_a_new_conversation():
    tok = byte_tokenizer()
    model = Script(tok, "ok")
    out = io.StringIO()
    conv = chat.chat_loop(
        model,
        tok,
        temperature=0.0,
        max_new_tokens=8,
        max_context=512,
        stdin=io.StringIO("one\n/clear\ntwo\n"),
        stdout=out,
    )
    assert conv == [{"role": "user", "content": "two"}, {"role": "assistant", "content": "ok"}]
    assert "(conversation cleared)" in out.getvalue()
    assert model.contexts[1] == tok.render_for_completion([{"role": "user", "content": "two"}])


def test_system_and_reset_commands():
    tok = byte_tokenizer()
    model = Script(tok, "ok")
    out = io.StringIO()
    conv = chat.chat_loop(
        model,
        tok,
        temperature=0.0,
        max_new_tokens=8,
        max_context=512,
        stdin=io.StringIO("one\n/system 简短回答\ntwo\n/reset\nthree\n"),
        stdout=out,
    )
    system = {"role": "system", "content": "简短回答"}
    assert model.contexts[1] == tok.render_for_completion(
        [system, {"role": "user", "content": "two"}]
    )
    # /reset clears the turns, not the system message
    assert model.contexts[2] == tok.render_for_completion(
        [system, {"role": "user", "content": "three"}]
    )
    assert conv == [{"role": "user", "content": "three"}, {"role": "assistant", "content": "ok"}]
    assert "(system message set; conversation cleared)" in out.getvalue()
    # The system message stays when old turns are dropped to fit the context.
    long = [
        {"role": "user", "content": "x" * 50},
        {"role": "assistant", "content": "y" * 50},
        {"role": "user", "content": "short"},
    ]
    ids = chat.fit_conversation(tok, long, 40, system="s")
    assert ids == tok.render_for_completion([{"role": "system", "content": "s"}, long[2]])


class Interrupted(Script):
    """Raises KeyboardInterrupt (Ctrl-C) after `after` tokens of each answer."""

    def __init__(self, tok: Tokenizer, reply: str, after: int):
        super().__init__(tok, reply)
        self.after = after

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        k = ids.shape[1] - 1 - max(i for i, t in enumerate(ids[0].tolist()) if t == self.start)
        if k == self.after:
            raise KeyboardInterrupt
        return super().forward(ids)


def test_ctrl_c_stops_the_answer_not_the_chat():
    tok = byte_tokenizer()
    out = io.StringIO()
    conv = chat.chat_loop(
        Interrupted(tok, "hello", after=2),
        tok,
        temperature=0.0,
        max_new_tokens=8,
        max_context=512,
        stdin=io.StringIO("a\nb\n"),
        stdout=out,
    )
    assert out.getvalue() == "assistant: he (stopped)\nassistant: he (stopped)\n"
    assert [m["content"] for m in conv] == ["a", "he", "b", "he"]


def test_ctrl_c_at_the_prompt_leaves_without_a_traceback(tmp_path, monkeypatch, capsys):
    tok = byte_tokenizer()
    _checkpoint(tmp_path, tok)

    class CtrlC(io.StringIO):
        def readline(self, *a):
            raise KeyboardInterrupt

    monkeypatch.setattr("sys.stdin", CtrlC())
    rc = chat.main(
        [
            "--checkpoint",
            str(tmp_path / "ckpt"),
            "--tokenizer",
            str(tmp_path / "tok"),
            "--device",
            "cpu",
        ]
    )
    assert rc == 130 and "Traceback" not in capsys.readouterr().err


def test_streamer_holds_back_half_characters():
    tok = byte_tokenizer()
    s = inference.TextStreamer(tok)
    pieces = [s.push(b) for b in "a你".encode()]
    assert pieces == ["a", "", "", "你"]
    assert s.flush() == ""


def test_old_turns_are_dropped_to_fit_the_context():
    tok = byte_tokenizer()
    conv = [
        {"role": "user", "content": "x" * 50},
        {"role": "assistant", "content": "y" * 50},
        {"role": "user", "content": "short"},
    ]
    ids = chat.fit_conversation(tok, conv, 40)
    assert ids == tok.render_for_completion(conv[2:])


def test_sampling_is_seeded_and_top_k_limits_choices():
    logits = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0])
    draws = []
    for _ in range(2):
        g = torch.Generator().manual_seed(7)
        params = SamplingParams(temperature=1.0, top_k=2)
        draws.append([inference.sample(logits, params, g) for _ in range(30)])
    assert draws[0] == draws[1]
    assert set(draws[0]) <= {3, 4}
    assert inference.sample(logits, SamplingParams(temperature=0.0)) == 4


def test_one_shot_prompt_prints_only_the_answer():
    tok = byte_tokenizer()
    out = io.StringIO()
    chat.chat_loop(
        Script(tok, "hello"),
        tok,
        temperature=0.0,
        max_new_tokens=8,
        max_context=512,
        stdout=out,
        prompt="hi",
    )
    assert out.getvalue() == "hello\n"


def _checkpoint(tmp_path, tok):
    from minillm_core.model import MiniLLM, ModelConfig
    from minillm_core.train.checkpointer import save_checkpoint

    torch.manual_seed(0)
    model = MiniLLM(
        ModelConfig(
            vocab_size=tok.get_vocab_size(),
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
        )
    )
    save_checkpoint(
        tmp_path / "ckpt",
        model,
        {"stage": "sft", "step": 1, "tokenizer_hash": tok.hash, "train": {"max_seq_len": 64}},
    )
    tok.save(tmp_path / "tok")
    return model


def test_command_reads_piped_input(tmp_path, monkeypatch, capsys):
    tok = byte_tokenizer()
    model = _checkpoint(tmp_path, tok)
    monkeypatch.setattr("sys.stdin", io.StringIO("你好\n/clear\n你是谁？\n/quit\n"))
    rc = chat.main(
        [
            "--checkpoint",
            str(tmp_path / "ckpt"),
            "--tokenizer",
            str(tmp_path / "tok"),
            "--temperature",
            "0",
            "--max-new-tokens",
            "6",
            "--device",
            "cpu",
        ]
    )
    assert rc == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("assistant: ") and lines[1] == "(conversation cleared)"
    assert lines[2].startswith("assistant: ") and len(lines) == 3
    # Greedy through the KV cache gives what the full-forward loop gives.
    ids = tok.render_for_completion([{"role": "user", "content": "你是谁？"}])
    stops = [tok.encode_special("<|assistant_end|>"), tok.get_bos_token_id()]
    greedy = SamplingParams(stop_ids=stops)
    cached = list(inference.generate(model, ids, 6, greedy))

    class NoCache(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m(x)

    assert cached == list(inference.generate(NoCache(model), ids, 6, greedy))
    assert lines[2] == "assistant: " + tok.decode(cached)


def test_command_refuses_another_tokenizer(tmp_path, capsys):
    tok = byte_tokenizer()
    _checkpoint(tmp_path, tok)
    Tokenizer({**{bytes([b]): b for b in range(256)}, b"ab": 256}).save(tmp_path / "tok")
    rc = chat.main(
        [
            "--checkpoint",
            str(tmp_path / "ckpt"),
            "--tokenizer",
            str(tmp_path / "tok"),
            "-p",
            "hi",
            "--device",
            "cpu",
        ]
    )
    assert rc == 2 and "another tokenizer" in capsys.readouterr().err
