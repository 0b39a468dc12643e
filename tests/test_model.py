from __future__ import annotations

import json
import random

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from model.batch import context_batch, dialog_batch, next_speaker
from model.checkpoint import CheckpointError, load_pretrained, save_pretrained
from model.cvae import (
    DECODE_DTYPES,
    DialogCVAE,
    ModelConfig,
    decode_dtype,
    fast_decode_dtype,
    gaussian_kl,
    num_parameters,
)
from model.vocab import Vocabulary

WORDS = [f"w{i}" for i in range(60)]


@pytest.fixture(scope="module")
def vocab() -> Vocabulary:
    return Vocabulary.build([WORDS])


def random_dialogs(n_dialogs=3, seed=0, max_turns=25, min_turns=2):
    rng = random.Random(seed)
    return [
        [
            (rng.choice("AB"), [rng.choice(WORDS) for _ in range(rng.randint(1, 12))])
            for _ in range(rng.randint(min_turns, max_turns))
        ]
        for _ in range(n_dialogs)
    ]


def make_model(vocab, variant="bn-cvae", **kw) -> DialogCVAE:
    torch.manual_seed(0)
    return DialogCVAE(ModelConfig.preset("tiny", variant=variant, vocab_size=len(vocab), **kw))


# --- batches --------------------------------------------------------------------------------


def test_dialog_batch_windows_follow_zhao(vocab):
    turns = [("A", ["w1"]), ("B", ["w2"]), ("B", ["w3"]), ("A", ["w4"])]
    b = dialog_batch([turns], vocab, max_context=2)
    assert b.num_examples == 4  # every utterance is a response once
    # rows: 0 marker, 1..4 the turns; response k sees the 2 positions before it
    assert b.context_index.tolist() == [[0, -1], [0, 1], [1, 2], [2, 3]]
    assert b.response_index.tolist() == [1, 2, 3, 4]
    # floor: 1 where the context utterance is by the responding speaker; the marker is nobody's
    assert b.context_floor.tolist() == [[0, 0], [0, 0], [0, 1], [0, 0]]
    assert b.utterances[0].tolist()[:3] == [vocab.bos_id, vocab.bod_id, vocab.eos_id]


def test_utterances_truncated_to_max_len(vocab):
    b = dialog_batch([[("A", WORDS[:50])]], vocab, max_utt_len=40)
    assert b.utt_lengths[1].item() == 42  # <s> + 40 words + </s>


def test_spans_give_the_same_contexts_as_the_whole_dialog(vocab):
    dialogs = random_dialogs(1, max_turns=30)
    model = make_model(vocab).eval()
    whole = model.encode_context(dialog_batch(dialogs, vocab))
    n = len(dialogs[0])
    spans = [(0, n // 3), (n // 3, n)]
    parts = torch.cat(
        [model.encode_context(dialog_batch(dialogs, vocab, spans=[s])) for s in spans]
    )
    torch.testing.assert_close(whole, parts)


def test_context_batch_matches_training_windows(vocab):
    turns = random_dialogs(1, min_turns=20)[0]
    train = dialog_batch([turns], vocab)
    for k in (0, 3, 9, 10, 15):
        inf = context_batch([turns[:k]], vocab, responders=[turns[k][0]])
        n = int(train.context_lengths[k])
        assert int(inf.context_lengths[0]) == n

        def rows(b, i, n=n):
            return [[t for t in b.utterances[r].tolist() if t] for r in b.context_index[i, :n]]

        assert rows(inf, 0) == rows(train, k)
        assert inf.context_floor[0, :n].tolist() == train.context_floor[k, :n].tolist()


def test_next_speaker():
    assert next_speaker([]) == "B"
    assert next_speaker([("A", ["x"]), ("B", ["y"])]) == "A"
    assert next_speaker([("alice", ["x"]), ("bob", ["y"]), ("bob", ["z"])]) == "alice"
    # one speaker alone: a name for the other party, never a made-up "not-C"
    assert next_speaker([("A", ["x"])]) == "B"
    assert next_speaker([("B", ["x"])]) == "A"
    assert next_speaker([("C", ["x"]), ("C", ["y"])]) == "A"


# --- the objective --------------------------------------------------------------------------


def test_gaussian_kl_equals_torch_distributions():
    torch.manual_seed(0)
    mu_q, lv_q, mu_p, lv_p = (torch.randn(5, 7) for _ in range(4))
    q = Normal(mu_q, torch.exp(0.5 * lv_q))
    p = Normal(mu_p, torch.exp(0.5 * lv_p))
    torch.testing.assert_close(gaussian_kl(mu_q, lv_q, mu_p, lv_p), kl_divergence(q, p).sum(-1))
    std = Normal(torch.zeros_like(mu_q), torch.ones_like(mu_q))
    torch.testing.assert_close(gaussian_kl(mu_q, lv_q), kl_divergence(q, std).sum(-1))


def test_model_kl_terms_equal_torch_distributions(vocab):
    model = make_model(vocab)
    batch = dialog_batch(random_dialogs(), vocab)
    out = model(batch)
    mu_q, lv_q = model.posterior(batch)
    mu_p, lv_p = model.prior_net(model.encode_context(batch))
    q, p = Normal(mu_q, torch.exp(0.5 * lv_q)), Normal(mu_p, torch.exp(0.5 * lv_p))
    torch.testing.assert_close(out.kl, kl_divergence(q, p).sum(-1))
    std = Normal(torch.zeros_like(mu_p), torch.ones_like(mu_p))
    torch.testing.assert_close(out.prior_kl, kl_divergence(p, std).sum(-1))


@pytest.mark.parametrize("variant", ["cvae", "cvae-bow", "bn-cvae"])
def test_dialog_level_and_per_window_paths_give_the_same_loss(vocab, variant):
    model = make_model(vocab, variant)
    batch = dialog_batch(random_dialogs(4), vocab)
    torch.manual_seed(1)
    fast = model(batch, kl_weight=0.3)
    torch.manual_seed(1)
    slow = model(batch, kl_weight=0.3, per_window=True)
    torch.testing.assert_close(fast.loss, slow.loss)
    torch.testing.assert_close(fast.nll, slow.nll)
    torch.testing.assert_close(fast.kl, slow.kl)
    # and the gradients agree too
    g_fast = torch.autograd.grad(fast.loss, model.decoder.out.weight)[0]
    g_slow = torch.autograd.grad(slow.loss, model.decoder.out.weight)[0]
    torch.testing.assert_close(g_fast, g_slow)


def test_objectives_of_the_variants(vocab):
    batch = dialog_batch(random_dialogs(), vocab)
    for variant in ("cvae", "cvae-bow", "bn-cvae"):
        model = make_model(vocab, variant)
        torch.manual_seed(2)
        o = model(batch, kl_weight=0.5)
        expected = o.nll + 0.5 * o.kl
        if variant == "cvae-bow":
            assert (o.bow > 0).all()
            expected = expected + o.bow
        if variant == "bn-cvae":
            expected = expected + o.prior_kl  # Eq. 11
        torch.testing.assert_close(o.loss, expected.mean())
    assert o.tokens.sum().item() == sum(len(t) + 1 for d in random_dialogs() for _, t in d)


def test_dropout_acts_in_training_only(vocab):
    batch = dialog_batch(random_dialogs(), vocab)
    plain, dropped = make_model(vocab), make_model(vocab, dropout=0.5)  # the same weights
    losses = {}
    for mode in ("eval", "train"):  # eval first: a training pass moves the BN statistics
        for name, model in (("plain", plain), ("dropped", dropped)):
            getattr(model, mode)()
            torch.manual_seed(3)
            losses[mode, name] = model(batch).nll
    torch.testing.assert_close(losses["eval", "plain"], losses["eval", "dropped"])
    assert not torch.allclose(losses["train", "plain"], losses["train", "dropped"])


def test_unlikelihood_loss_matches_welleck_et_al(vocab):
    """Token-level unlikelihood (Welleck et al. 2020), against a plain loop over the steps: at
    step t, -sum log(1 - p(c)) over the distinct earlier tokens c of the response other than x_t."""
    model = make_model(vocab, unlikelihood_weight=0.5).eval()  # any weight in (0, 1) counts
    w = [vocab.bos_id, *vocab.encode(["w1", "w2", "w1", "w1", "w3"])]
    responses = torch.tensor([w + [vocab.eos_id], w[:3] + [vocab.eos_id, 0, 0, 0]])
    lengths = torch.tensor([7, 4])
    h0 = torch.randn(1, 2, model.config.dec_hidden)
    nll, ul, owner = model.decoder.token_nll(h0, responses, lengths, unlikelihood=True)
    plain_nll, none, _ = model.decoder.token_nll(h0, responses, lengths)
    assert none is None
    torch.testing.assert_close(nll, plain_nll)  # the same -log p either way

    out, _ = model.decoder.rnn(model.decoder.embedding(responses[:, :-1]), h0)
    log_p = torch.log_softmax(model.decoder.logits(out), dim=-1)
    expected = []
    for e, n in enumerate(lengths.tolist()):
        targets = responses[e, 1:n].tolist()
        total = 0.0
        for t, target in enumerate(targets):
            for c in set(targets[:t]) - {target}:
                total -= torch.log(1 - log_p[e, t, c].exp()).item()
        expected.append(total)
    per_example = torch.zeros(2).index_add_(0, owner, ul)
    torch.testing.assert_close(per_example, torch.tensor(expected), rtol=1e-4, atol=1e-5)
    assert expected[0] > 0 and expected[1] > 0

    # it enters the objective with its weight; the -ELBO terms are unchanged
    batch = dialog_batch(random_dialogs(), vocab)
    torch.manual_seed(2)
    o = model(batch)
    assert o.unlikelihood.sum() > 0
    torch.testing.assert_close(o.loss, (o.nll + o.kl + o.prior_kl + 0.5 * o.unlikelihood).mean())
    plain_model = make_model(vocab).eval()  # the same weights
    torch.manual_seed(2)
    plain = plain_model(batch)
    torch.testing.assert_close(o.nll, plain.nll)
    assert (plain.unlikelihood == 0).all()


def with_and_without(vocab, batch, seed: int, **option):
    """A training-mode model with ``option`` and the same weights without it, and their outputs
    on ``batch`` from the same random state (so the same z)."""
    model = make_model(vocab, **option).train()
    plain = make_model(vocab).train()
    torch.manual_seed(seed)
    o = model(batch)
    torch.manual_seed(seed)
    return model, o, plain, plain(batch)


def test_sequence_unlikelihood_enters_the_training_objective_only(vocab):
    """With its weight, the training loss adds the sequence-level unlikelihood of the model's
    own greedy responses; validation (eval mode) and the -ELBO terms do not change."""
    batch = dialog_batch(random_dialogs(), vocab)
    model, o, plain, p = with_and_without(vocab, batch, 4, sequence_unlikelihood_weight=0.5)
    torch.testing.assert_close(o.nll, p.nll)
    torch.testing.assert_close(o.kl, p.kl)
    torch.testing.assert_close(o.loss, p.loss + 0.5 * o.sequence_unlikelihood.mean())
    assert (o.sequence_unlikelihood > 0).any()  # a random model repeats itself
    assert o.extras["repeating"].shape == o.nll.shape
    assert (p.sequence_unlikelihood == 0).all() and "repeating" not in p.extras
    model.eval()
    plain.eval()
    torch.manual_seed(4)
    o = model(batch)
    assert (o.sequence_unlikelihood == 0).all() and "repeating" not in o.extras


def test_context_contrast_is_a_logistic_loss_on_the_gap_between_contexts(vocab):
    """With its weight, the training loss adds softplus(-gap): gap the per-token -log p of each
    response under the context half the batch away minus under its own, the same z; computed
    here by hand from the decoder. Validation (eval mode) and the -ELBO terms do not change."""
    batch = dialog_batch(random_dialogs(n_dialogs=4), vocab)
    model, o, plain, p = with_and_without(vocab, batch, 5, context_contrast_weight=2.0)
    torch.testing.assert_close(o.nll, p.nll)
    torch.testing.assert_close(o.kl, p.kl)
    assert "context_gap" not in p.extras

    # by hand: the z of the forward pass (same seed), every response under context (i + E/2) % E
    c = model.encode_context(batch)
    torch.manual_seed(5)
    mu_q, logvar_q = model.recognition(c, model.encode_utterances(batch)[batch.response_index])
    z = mu_q + torch.randn_like(mu_q) * torch.exp(0.5 * logvar_q)
    torch.testing.assert_close(mu_q, o.extras["mu_q"])
    e = c.shape[0]
    responses, lengths = batch.responses(), batch.utt_lengths[batch.response_index]
    other = [(i + e - e // 2) % e for i in range(e)]  # torch.roll(arange(e), e // 2)
    gaps = []
    for i in range(e):
        words = responses[i : i + 1, : lengths[i]]
        nlls = []
        for j in (i, other[i]):
            h0 = model.decoder.initial_state(c[j : j + 1], z[i : i + 1])
            nll, _, _ = model.decoder.token_nll(h0, words, lengths[i : i + 1])
            nlls.append(nll.sum())
        gaps.append((nlls[1] - nlls[0]) / (lengths[i] - 1))
    gap = torch.stack(gaps).detach()
    torch.testing.assert_close(o.extras["context_gap"], gap, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(o.loss, p.loss + 2.0 * torch.nn.functional.softplus(-gap).mean())
    # every example is contrasted with another one's context, each context used once
    assert sorted(other) == list(range(e)) and all(j != i for i, j in enumerate(other))

    # the contrast trains the decoder's reading of the context, not the prior
    o.loss.backward()
    p.loss.backward()
    init, plain_init = model.decoder.init_state.weight.grad, plain.decoder.init_state.weight.grad
    assert not torch.allclose(init, plain_init)
    for mine, theirs in zip(
        model.prior_net.parameters(), plain.prior_net.parameters(), strict=True
    ):
        torch.testing.assert_close(mine.grad, theirs.grad)

    model.eval()
    torch.manual_seed(5)
    assert "context_gap" not in model(batch).extras


def test_frozen_gamma_gets_no_gradient_and_never_changes(vocab):
    model = make_model(vocab, "bn-cvae", bn_gamma=0.6)
    bn = model.recognition.mu_bn
    assert not bn.weight.requires_grad and bn.bias.requires_grad
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.05)
    batch = dialog_batch(random_dialogs(), vocab)
    beta0 = bn.bias.detach().clone()
    for _ in range(5):
        opt.zero_grad()
        model(batch).loss.backward()
        assert bn.weight.grad is None
        opt.step()
    assert torch.equal(bn.weight, torch.full_like(bn.weight, 0.6))
    assert not torch.equal(bn.bias, beta0)  # the shift is learnt


def test_bn_posterior_mean_has_batch_mean_beta_and_std_gamma(vocab):
    model = make_model(vocab, "bn-cvae", bn_gamma=0.6)
    with torch.no_grad():
        model.recognition.mu_bn.bias.copy_(torch.linspace(-1, 1, model.config.latent_dim))
    model.train()
    batch = dialog_batch(random_dialogs(6), vocab)
    mu, _ = model.posterior(batch)
    beta = model.recognition.mu_bn.bias
    torch.testing.assert_close(mu.mean(0), beta, atol=1e-5, rtol=0)
    # BN normalises with the biased variance, so the biased std equals gamma
    torch.testing.assert_close(
        mu.std(0, unbiased=False), torch.full_like(beta, 0.6), atol=1e-2, rtol=0
    )


def test_cvae_has_no_batch_norm(vocab):
    assert make_model(vocab, "cvae").recognition.mu_bn is None


# --- generation -----------------------------------------------------------------------------


def test_sample_responses_shapes_and_seed(vocab):
    model = make_model(vocab).eval()
    batch = context_batch([[], random_dialogs(1)[0]], vocab)
    a = model.sample_responses(batch, 4, max_length=7, decoding="sample",
                               generator=torch.Generator().manual_seed(3))  # fmt: skip
    b = model.sample_responses(batch, 4, max_length=7, decoding="sample",
                               generator=torch.Generator().manual_seed(3))  # fmt: skip
    assert a.token_ids.shape[:2] == (2, 4) and a.token_ids.shape[2] <= 7
    assert torch.equal(a.token_ids, b.token_ids) and torch.equal(a.log_probs, b.log_probs)
    assert (a.lengths <= 7).all() and (a.log_probs <= 0).all()
    banned = {vocab.pad_id, vocab.bos_id, vocab.bod_id}
    for e in range(2):
        for n in range(4):
            words = a.token_ids[e, n, : a.lengths[e, n]].tolist()
            assert not banned & set(words)


def test_empty_context_is_what_a_conversation_without_turns_encodes_to(vocab):
    """encode_empty_context (the p(r) of MMI and the anti-LM) is the begin-of-dialog marker as
    context_batch builds it for a conversation with no turns, floor flag and all."""
    model = make_model(vocab).eval()
    with torch.no_grad():
        expected = model.encode_context(context_batch([[]], vocab))
        assert torch.equal(model.encode_empty_context(), expected)
        flags_differ = context_batch([[]], vocab)
        flags_differ.context_floor.fill_(1)  # the other speaker's marker: another encoding
        assert not torch.allclose(model.encode_context(flags_differ), expected)


def test_greedy_samples_differ_through_z(vocab):
    model = make_model(vocab).eval()
    with torch.no_grad():  # a prior with a large variance, so different z give different words
        model.prior_net.mlp[-1].bias[model.config.latent_dim :] = 3.0
    batch = context_batch([random_dialogs(1)[0]], vocab)
    out = model.sample_responses(batch, 8, max_length=6, generator=torch.Generator().manual_seed(0))
    assert len({tuple(r.tolist()) for r in out.token_ids[0]}) > 1


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_output_projection_keeps_float32_results(vocab, dtype):
    model = make_model(vocab).eval()
    dialogs = random_dialogs(2, seed=4)
    batch = dialog_batch(dialogs, vocab)
    contexts = context_batch([d[:3] for d in dialogs], vocab)
    noise = torch.randn(2, 3, model.config.latent_dim, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        torch.manual_seed(1)
        nll_ref = model(batch).nll
        model.set_decode_dtype(dtype)
        assert model.decoder.out.weight.dtype == dtype
        assert model.decoder.rnn.weight_hh_l0.dtype == torch.float32  # only the projection
        torch.manual_seed(1)
        nll = model(batch).nll
        low = model.sample_responses(contexts, 3, max_length=8, noise=noise)
    assert nll.dtype == low.log_probs.dtype == torch.float32
    # A tiny random model's logits are nearly flat, so the argmax may differ; the scores agree
    # to within the rounding of 16-bit weights.
    torch.testing.assert_close(nll, nll_ref, rtol=2e-2, atol=0)
    assert (low.log_probs <= 0).all() and low.token_ids.shape[:2] == (2, 3)
    model.set_decode_dtype(torch.float32)
    torch.manual_seed(1)
    with torch.inference_mode():
        torch.testing.assert_close(model(batch).nll, nll_ref, rtol=1e-2, atol=0)


def test_decode_dtype_names():
    assert decode_dtype("float32", "cpu") == torch.float32
    assert decode_dtype("bfloat16", "cpu") == torch.bfloat16
    assert decode_dtype("auto", "cpu") == fast_decode_dtype("cpu")
    assert fast_decode_dtype("cpu") in DECODE_DTYPES.values()
    with pytest.raises(ValueError, match="decode dtype must be"):
        decode_dtype("int8", "cpu")


# --- checkpoints ----------------------------------------------------------------------------


def test_checkpoint_round_trip(vocab, tmp_path):
    model = make_model(vocab, "cvae-bow")
    save_pretrained(model, vocab, tmp_path / "ck", metadata={"note": "x"})
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == [
        "config.json", "model.safetensors", "vocab.json"]  # fmt: skip
    loaded, v2 = load_pretrained(tmp_path / "ck")
    assert v2.words == vocab.words and loaded.config == model.config and not loaded.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    batch = dialog_batch(random_dialogs(), vocab)
    model.eval()
    torch.manual_seed(0)
    a = model(batch).loss
    torch.manual_seed(0)
    assert torch.equal(a, loaded(batch).loss)


def test_half_precision_checkpoint_loads_as_float32(vocab, tmp_path):
    model = make_model(vocab)
    save_pretrained(model, vocab, tmp_path / "ck", dtype=torch.float16)
    loaded, _ = load_pretrained(tmp_path / "ck")
    w = loaded.decoder.out.weight
    assert w.dtype == torch.float32
    torch.testing.assert_close(w, model.decoder.out.weight, atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize(
    "damage, names",
    [
        (lambda d: (d / "model.safetensors").write_bytes(b"garbage"), "model.safetensors"),
        (lambda d: (d / "model.safetensors").unlink(), "model.safetensors"),
        (lambda d: (d / "config.json").write_text("{not json"), "config.json"),
        (lambda d: (d / "vocab.json").write_text('{"words": [1, 2]}'), "vocab.json"),
        (
            lambda d: (d / "vocab.json").write_text(
                json.dumps({"words": ["<pad>", "<unk>", "<s>", "</s>", "<d>"]})
            ),
            "vocab.json",
        ),
        (lambda d: _edit_config(d, latent_dim=9), "model.safetensors"),
        (lambda d: _edit_config(d, variant="nope"), "config.json"),
    ],
)
def test_corrupt_checkpoint_names_the_file(vocab, tmp_path, damage, names):
    save_pretrained(make_model(vocab), vocab, tmp_path / "ck")
    damage(tmp_path / "ck")
    with pytest.raises(CheckpointError, match=names):
        load_pretrained(tmp_path / "ck")


def _edit_config(directory, **changes):
    path = directory / "config.json"
    raw = json.loads(path.read_text())
    raw["model"].update(changes)
    path.write_text(json.dumps(raw))


def test_missing_checkpoint_directory(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint directory"):
        load_pretrained(tmp_path / "nothing")


def test_unknown_preset_and_variant():
    with pytest.raises(ValueError, match="unknown preset"):
        ModelConfig.preset("huge")
    with pytest.raises(ValueError, match="variant"):
        ModelConfig(variant="vae")


def gru_parameters(inputs: int, hidden: int) -> int:
    return 3 * (hidden * inputs + hidden * hidden + 2 * hidden)  # 3 gates: W_i, W_h, b_i, b_h


def linear_parameters(inputs: int, outputs: int) -> int:
    return outputs * inputs + outputs


def test_paper_preset_has_the_papers_layer_sizes():
    """Zhao et al.'s dimensions (embedding 200, utterance BiGRU 300, context GRU 600 over the
    utterance vectors and the floor bit, decoder GRU 400, latent 200; the prior an MLP with
    a hidden layer of 2 x latent), counted layer by layer for a vocabulary of 10,000."""
    v, emb, utt, ctx, dec, z = 10_000, 200, 300, 600, 400, 200
    expected = {
        "embedding": v * emb,  # shared by the encoder and the decoder
        "utt_encoder": v * emb + 2 * gru_parameters(emb, utt),
        "ctx_encoder": gru_parameters(2 * utt + 1, ctx),
        "recognition": linear_parameters(ctx + 2 * utt, 2 * z),
        "prior_net": linear_parameters(ctx, 2 * z) + linear_parameters(2 * z, 2 * z),
        "decoder": v * emb
        + linear_parameters(ctx + z, dec)
        + gru_parameters(emb, dec)
        + linear_parameters(dec, v),
    }
    for variant in ("cvae", "cvae-bow", "bn-cvae"):
        model = DialogCVAE(ModelConfig.preset("paper", variant=variant, vocab_size=v))
        sizes = {name: num_parameters(child) for name, child in model.named_children()}
        want = dict(expected)
        if variant == "cvae-bow":
            want["bow_head"] = linear_parameters(ctx + z, dec) + linear_parameters(dec, v)
        if variant == "bn-cvae":
            want["recognition"] += 2 * z  # the BN's gamma and beta
        assert sizes == want, variant
        assert num_parameters(model) == sum(want.values()) - 2 * v * emb  # counted once


def test_forward_refuses_a_batch_without_responses(vocab):
    batch = context_batch([[("A", ["w1", "w2"])]], vocab)
    with pytest.raises(
        ValueError, match="^forward needs a batch with responses; use sample_responses$"
    ):
        make_model(vocab)(batch)


def test_checkpoint_files_are_world_readable(vocab, tmp_path):
    save_pretrained(make_model(vocab), vocab, tmp_path / "ck")
    for f in (tmp_path / "ck").iterdir():
        assert f.stat().st_mode & 0o044 == 0o044, f
    assert (tmp_path / "ck").stat().st_mode & 0o055 == 0o055
