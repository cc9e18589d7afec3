"""Majority voting: equivalence clusters, ties, rows without answers, label choice, batch voting."""

from ttrl_megatron.ttrl import majority_vote, vote_many


def b(x):
    return f"Reasoning... so the answer is \\boxed{{{x}}}."


def test_equivalent_forms_form_one_cluster(pool):
    # upstream counts 0.5, \frac{1}{2} and 1/2 as three votes (and would pick 3); here they are one cluster of 3
    responses = [b("3"), b("0.5"), b(r"\frac{1}{2}"), b("3"), b("1/2")]
    assert majority_vote(responses, pool) == ("0.5", 3 / 5)


def test_x_equals_prefix_and_percent_join_the_plain_value(pool):
    responses = [b("x=5"), b("4"), b("5"), b("4"), b(r"5 \text{ apples}")]
    assert majority_vote(responses, pool) == ("x=5", 3 / 5)
    responses = [b(r"25\%"), b("0.3"), b("0.25"), b(r"\frac{1}{4}"), b("0.3")]
    assert majority_vote(responses, pool) == (r"25\%", 3 / 5)


def test_symbolic_equivalence_clusters(pool):
    responses = [b(r"\frac{\sqrt{2}}{2}"), b(r"\sqrt{2}"), b(r"\frac{1}{\sqrt{2}}"), b(r"\sqrt{2}"), b(r"\sqrt2/2")]
    assert majority_vote(responses, pool) == (r"\frac{\sqrt{2}}{2}", 3 / 5)


def test_tie_goes_to_the_cluster_that_appears_first(pool):
    assert majority_vote([b("7"), b("8"), b("8"), b("7")], pool) == ("7", 0.5)
    assert majority_vote([b("8"), b("7"), b("7"), b("8")], pool) == ("8", 0.5)
    # the first member of a cluster, not its size order, decides; equivalent spellings tie as one cluster
    assert majority_vote([b("2"), b("1/2"), b("0.5"), b("2.0")], pool) == ("2", 0.5)


def test_rows_without_answers_count_in_the_denominator(pool):
    responses = ["I don't know", b("4"), "\\boxed{", b("4"), b("5"), None]
    assert majority_vote(responses, pool) == ("4", 2 / 6)


def test_no_answer_anywhere(pool):
    assert majority_vote(["nothing", "still nothing", r"\boxed{}"], pool) == (None, 0.0)
    assert majority_vote([], pool) == (None, 0.0)


def test_label_is_the_earliest_spelling_in_the_winning_cluster(pool):
    responses = [b("9"), b(r"\frac{6}{4}"), b("1.5"), b("3/2"), b("9")]
    assert majority_vote(responses, pool) == (r"\frac{6}{4}", 3 / 5)


def test_vote_details_and_batch_voting(pool):
    prompts = [[b("1"), b("2"), b("1.0"), "none"], [b("x"), b("y"), b("y"), b("x"), b("y")], ["none"]]
    v1, v2, v3 = vote_many(prompts, pool)
    assert (v1.label, v1.ratio, v1.cluster_of, v1.cluster_sizes, v1.winner) == ("1", 0.5, [0, 1, 0, -1], [2, 1], 0)
    assert v1.agrees == [True, False, True, False]
    assert (v2.label, v2.ratio) == ("y", 3 / 5)
    assert (v3.label, v3.ratio, v3.winner) == (None, 0.0, -1)


def test_adversarial_answers_do_not_block_the_vote(pool):
    responses = [b("2^{2^{2^{2^{2^{2}}}}}"), b("((10^{9})!)!"), b("12"), b("12.0"), b("{" * 3000 + "}" * 3000)]
    assert majority_vote(responses, pool) == ("12", 2 / 5)
