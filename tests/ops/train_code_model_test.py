"""tools/train_code_model.py's source listing on a synthetic site-packages: a package's modules are
kept, while standard-library paths, top-level packages and modules named like standard modules
(backports such as enum34's enum/), vendored copies of standard modules and the STDLIB_COPIES
names are left out, each counted under its reason."""
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


if __name__ == "__main__":
    unittest.main()
