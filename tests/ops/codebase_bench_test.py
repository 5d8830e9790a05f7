"""bench/codebase_bench.py's statistics (the Wilson interval, the mean's normal interval and the
paired difference against dense, on values whose answers are known in closed form), its
settings syntax and the registry's copies of a context per index options."""
import math
import os
import sys
import unittest

BENCH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bench")
sys.path.insert(0, BENCH)
import codebase_bench as cb  # noqa: E402


class StatisticsTest(unittest.TestCase):
    def test_wilson(self):
        low, high = cb.wilson(0, 500)
        self.assertEqual(low, 0.0)
        self.assertAlmostEqual(high, 1.96 ** 2 / (500 + 1.96 ** 2), places=12)
        low, high = cb.wilson(11, 500)  # the 8K dense cell of bench/RESULTS.md
        self.assertAlmostEqual(low, 0.0123, places=4)
        self.assertAlmostEqual(high, 0.0390, places=4)

    def test_mean_ci(self):
        m, half = cb.mean_ci([1.0, 2.0, 3.0, 4.0])
        self.assertEqual(m, 2.5)
        self.assertAlmostEqual(half, 1.96 * math.sqrt((5.0 / 3.0) / 4), places=12)
        self.assertTrue(math.isnan(cb.mean_ci([])[0]))

    def test_paired_difference_removes_the_spread_of_the_tasks(self):
        # Tasks whose losses vary a lot, a setting that is 0.1 worse on every one of them: the
        # cells' own intervals overlap, the paired difference is exactly 0.1 with no spread.
        dense = [1.0, 3.0, 2.0, 5.0, 0.5, 4.0]
        worse = [v + 0.1 for v in dense]
        self.assertGreater(cb.mean_ci(dense)[1], 1.0)
        diff, half = cb.paired_vs(worse, dense)
        self.assertAlmostEqual(diff, 0.1, places=12)
        self.assertAlmostEqual(half, 0.0, places=12)
        # Hits: one task gained and three lost of eight.
        hits = [1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0]
        base = [0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]
        diff, half = cb.paired_vs(hits, base)
        self.assertAlmostEqual(diff, -2.0 / 8)
        d = [h - b for h, b in zip(hits, base)]
        var = sum((x - diff) ** 2 for x in d) / 7
        self.assertAlmostEqual(half, 1.96 * math.sqrt(var / 8), places=12)


class SettingsTest(unittest.TestCase):
    def test_settings_and_windows(self):
        settings = cb.parse_settings(
            "dense,squeezed:0.1,squeezed-step:0.03,squeezed-w800:0.1,squeezed-step-w400:0.05,"
            "pages:0.1,recent:0.2")
        self.assertEqual([label for label, _ in settings],
                         ["dense", "squeezed:0.1", "squeezed-step:0.03", "squeezed-w800:0.1",
                          "squeezed-step-w400:0.05", "pages:0.1", "recent:0.2"])
        opts = dict(settings)
        self.assertEqual(opts["dense"], {"mode": "dense"})
        self.assertEqual(opts["squeezed:0.1"], {"mode": "squeezed", "budget": 0.1})
        self.assertEqual(opts["squeezed-step:0.03"],
                         {"mode": "squeezed", "budget": 0.03, "budget_policy": "per_step"})
        self.assertEqual(opts["squeezed-w800:0.1"],
                         {"mode": "squeezed", "budget": 0.1, "index": {"window": 800}})
        self.assertEqual(opts["squeezed-step-w400:0.05"],
                         {"mode": "squeezed", "budget": 0.05, "budget_policy": "per_step",
                          "index": {"window": 400}})
        self.assertEqual(opts["pages:0.1"], {"mode": "pages", "budget": 0.1})
        # The k-means' early stop as an index suffix, alone or with a window, in either order.
        for label in ("squeezed-mc0.005:0.1", "squeezed-step-w400-mc0.01:0.1",
                      "squeezed-mc0.01-w400:0.1"):
            self.assertIn("index", dict(cb.parse_settings(label))[label])
        self.assertEqual(dict(cb.parse_settings("squeezed-mc0.005:0.1"))["squeezed-mc0.005:0.1"],
                         {"mode": "squeezed", "budget": 0.1,
                          "index": {"kmeans_min_changed": 0.005}})
        self.assertEqual(
            dict(cb.parse_settings("squeezed-step-w400-mc0.01:0.1"))
            ["squeezed-step-w400-mc0.01:0.1"]["index"], {"window": 400, "kmeans_min_changed": 0.01})
        # Query blocks: a request option, no index of its own.
        self.assertEqual(dict(cb.parse_settings("squeezed-qb64:0.1"))["squeezed-qb64:0.1"],
                         {"mode": "squeezed", "budget": 0.1, "query_block": 64})
        self.assertEqual(
            dict(cb.parse_settings("squeezed-step-w400-qb16:0.1"))["squeezed-step-w400-qb16:0.1"],
            {"mode": "squeezed", "budget": 0.1, "budget_policy": "per_step",
             "index": {"window": 400}, "query_block": 16})
        # Tail estimation: a request option too.
        self.assertEqual(dict(cb.parse_settings("squeezed-qb4-tail:0.03"))["squeezed-qb4-tail:0.03"],
                         {"mode": "squeezed", "budget": 0.03, "query_block": 4,
                          "estimate_tail": True})
        for bad in ("squeezed", "pages-w10:0.1", "sparse:0.1", "squeezed-mc1.5:0.1",
                    "pages-mc0.005:0.1", "pages-qb8:0.1", "squeezed-qbx:0.1", "recent-tail:0.1"):
            with self.assertRaises(SystemExit):
                cb.parse_settings(bad)

    def test_a_window_registers_its_own_copy_of_a_context(self):
        calls = []

        class FakeClient:
            def register_context(self, name, text, index=None):
                calls.append((name, text, index))

        registry = cb.Registry(FakeClient(), "t")
        a = registry.name(("ctx", 1), "text")
        self.assertEqual(registry.name(("ctx", 1), "text"), a)  # registered once
        b = registry.name(("ctx", 1), "text", {"window": 800})
        self.assertNotEqual(a, b)
        self.assertEqual(registry.name(("ctx", 1), "text", {"window": 800}), b)
        c = registry.name(("ctx", 1), "text", {"kmeans_min_changed": 0.005})
        self.assertNotIn(c, (a, b))
        self.assertEqual(calls, [("t-0", "text", None), ("t-1", "text", {"window": 800}),
                                 ("t-2", "text", {"kmeans_min_changed": 0.005})])


class TableTest(unittest.TestCase):
    def test_markdown_table(self):
        import contextlib
        import io
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            cb.markdown_table("T:", ["a", "b"], [["1", cb.or_dash(float("nan"), "x")],
                                                  ["2", cb.or_dash(0.5, "0.500")]])
        self.assertEqual(out.getvalue(), "\nT:\n\n| a | b |\n|---|---|\n| 1 | - |\n| 2 | 0.500 |\n")


class LossTest(unittest.TestCase):
    def test_loss_cells_carry_the_realised_budget_of_each_setting(self):
        # A fake server: the continuation's scored tokens have log-probability -1 (dense), -2
        # (squeezed) or -3 (no context, whose first scored token is left out); squeezed keeps
        # 0.15 of the context, dense 1.0.
        class Usage:
            def __init__(self, kv_budget):
                self.kv_budget = kv_budget

        class Scored:
            def __init__(self, logprob):
                self.logprob = logprob

        class Completion:
            def __init__(self, logprobs, kv_budget):
                self.prompt_logprobs = [Scored(lp) for lp in logprobs]
                self.usage = Usage(kv_budget)

        class FakeClient:
            def register_context(self, name, text, index=None):
                pass

            def complete(self, text, context, **opts):
                if not context:
                    return Completion([-9.0, -3.0, -3.0], 1.0)
                if opts.get("mode") == "squeezed":
                    return Completion([-2.0, -2.0], 0.15)
                return Completion([-1.0, -1.0], 1.0)

        tasks = [{"id": i, "module_context": f"m{i}", "context": f"c{i}", "continuation": "x"}
                 for i in range(3)]
        settings = cb.parse_settings("dense,squeezed:0.1")
        losses, budgets = cb.run_loss(FakeClient(), cb.Registry(FakeClient(), "t"), tasks,
                                      settings, 2, lambda i, n: None)
        self.assertEqual(losses["dense"], [1.0] * 3)
        self.assertEqual(losses["squeezed:0.1"], [2.0] * 3)
        self.assertEqual(losses["no context (dense)"], [3.0] * 3)
        self.assertEqual(losses["module only (dense)"], [1.0] * 3)
        self.assertEqual(budgets, {"dense": [1.0] * 3, "squeezed:0.1": [0.15] * 3})


if __name__ == "__main__":
    unittest.main()
