"""A solution to Exercise 2 of chapter 3 (book/03_logit_adjustment_fails.ipynb):
The kNN P-gap of a run's features at any probe setting.

The chapter probes the features with the settings of the paper's kNN code (k = 200, t =
0.1): the balanced validation set is the bank, the test set the queries. Changing k and
t changes how local the vote is; if the P-gap keeps its size and its order across the
losses, the conclusion does not hang on the probe's settings.
"""
import lt_utils as lt


def knn_p_gap(run, groups, num_classes, k=200, t=0.1):
    """The kNN P-gap of one run's features: val is the bank, test the queries.

    Args:
        run: a `zero_shot` or `fine_tune` result; `run["val"]` and `run["test"]`
            hold "features" (N x D), "labels" (N) and, where known, "ids" (N).
        groups: (C,) one P-group per class (0 Many, 1 Medium, 2 Few).
        num_classes: the number of classes C.
        k: the number of neighbours of a query.
        t: the temperature of the exp(similarity / t) votes.

    Returns:
        P-Many minus P-Few kNN test accuracy, in points (a float).
    """
    bank, queries = run["val"], run["test"]
    # the sample ids (where the dataset has them) make knn_predict refuse a bank
    # that shares images with the queries
    scores = lt.knn_predict(bank["features"], bank["labels"], queries["features"],
                            k=k, t=t, num_classes=num_classes,
                            bank_ids=bank.get("ids"), query_ids=queries.get("ids"))
    # group accuracy = mean of the per-class accuracies of the group's classes
    p_group = lt.accuracy_report(scores, queries["labels"], p_groups=groups)["p_group"]
    return float(p_group[0] - p_group[2])
