"""tools/train_code_model.py's source listing on a synthetic site-packages: a package's modules are
kept, while standard-library paths, top-level packages and modules named like standard modules
(backports such as enum34's enum/), vendored copies of standard modules and the STDLIB_COPIES
names are left out, each counted under its reason; with --with-stubs a module's .pyi follows it,
and typeshed's standard-library stubs never enter."""
import os
import sys
import tempfile
import unittest

TOOLS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools")
sys.path.insert(0, TOOLS)
import train_code_model as tcm  # noqa: E402


class ListPyFilesTest(unittest.TestCase):
    def test_keeps_packages_and_leaves_out_standard_module_copies(self):
        with tempfile.TemporaryDirectory() as tmp:
            stdlib = os.path.join(tmp, "lib", "python3.99")
            site = os.path.join(stdlib, "site-packages")
            files = {
                os.path.join(stdlib, "json", "__init__.py"): "",  # the standard library itself
                os.path.join(stdlib, "enum.py"): "",
                os.path.join(site, "mypkg", "__init__.py"): "",
                os.path.join(site, "mypkg", "core.py"): "",
                os.path.join(site, "mypkg", "_vendor", "json", "decoder.py"): "",  # vendored
                os.path.join(site, "mypkg", "_vendor", "attrs_lite.py"): "",
                os.path.join(site, "enum", "__init__.py"): "",  # a backport named like enum
                os.path.join(site, "json.py"): "",
                os.path.join(site, "backports", "zoneinfo.py"): "",  # STDLIB_COPIES
                os.path.join(site, "mypkg", "notes.txt"): "",
            }
            for path, text in files.items():
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "w") as f:
                    f.write(text)
            kept, skipped = tcm.list_py_files([site], [stdlib])
            self.assertEqual([rel for _, rel in kept],
                             ["mypkg/__init__.py", "mypkg/_vendor/attrs_lite.py", "mypkg/core.py"])
            self.assertEqual(skipped["standard module backport or copy (by name)"], 4, skipped)

    def test_stubs_follow_their_modules_and_typeshed_never_enters(self):
        with tempfile.TemporaryDirectory() as tmp:
            stdlib = os.path.join(tmp, "lib", "python3.99")
            site = os.path.join(stdlib, "site-packages")
            os.makedirs(stdlib)
            for rel in ("mypkg/core.py", "mypkg/core.pyi", "mypkg/a.py",
                        "mypy/typeshed/stdlib/collections/__init__.pyi",
                        "jedi/third_party/typeshed/stdlib/os/path.pyi", "mypy/build.py"):
                path = os.path.join(site, rel)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                open(path, "w").close()
            kept, _ = tcm.list_py_files([site], [stdlib], with_stubs=True)
            self.assertEqual([rel for _, rel in kept],
                             ["mypkg/a.py", "mypkg/core.py", "mypkg/core.pyi", "mypy/build.py"])
            kept, _ = tcm.list_py_files([site], [stdlib])
            self.assertEqual([rel for _, rel in kept], ["mypkg/a.py", "mypkg/core.py",
                                                        "mypy/build.py"])


if __name__ == "__main__":
    unittest.main()
