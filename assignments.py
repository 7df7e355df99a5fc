"""
assignments.py: the course copy of this repository. It writes a copy in which the bodies of a few core
functions are replaced by `raise NotImplementedError("assignment N: ...")`, signatures and docstrings kept.
The test suite grades them: in the copy, every test passes or fails with one of these errors. ASSIGNMENTS.md
says what each assignment is and asks one question to answer by measurement; ANSWERS.md, for instructors,
has the measured answers and is left out of the copy (so are the tests of this file).

    python assignments.py --student ../nanopa-student     # write the student copy
    python assignments.py --grade 1                       # run the tests that grade assignment 1
    python assignments.py --list                          # the assignments and the tests that grade them
"""
import argparse
import ast
import os
import shutil
import subprocess
import sys
from collections import namedtuple

HERE = os.path.dirname(os.path.abspath(__file__))

Assignment = namedtuple("Assignment", "n title file functions tests")
ASSIGNMENTS = (
    Assignment(1, "progress advantage", "pa.py", ("progress_advantage",),
               ("test_pa_is_beta_times_masked_log_ratio_sum", "test_pa_ignores_prompt_and_padding_tokens",
                "test_pa_is_zero_when_policy_equals_reference", "test_pa_math_is_at_least_fp32",
                "test_prop1_pa_of_optimal_policy_equals_soft_advantage")),
    Assignment(2, "AUROC", "pa.py", ("auroc",),
               ("test_auroc_matches_pairwise_count_with_ties", "test_auroc_extremes_and_empty_class")),
    Assignment(3, "the per-token KL reward", "train.py", ("episode_tensors",),
               ("test_env_reward_lands_on_last_action_token_of_each_episode",
                "test_kl_reward_is_zero_when_policy_equals_reference")),
    Assignment(4, "GAE", "train.py", ("gae",),
               ("test_gae_matches_naive_double_loop", "test_gae_skips_masked_tokens_like_the_compressed_sequence",
                "test_gae_with_gamma_lambda_one_is_return_to_go_minus_value")),
    Assignment(5, "PPO's clipped losses", "train.py", ("ppo_losses",),
               ("test_clipped_policy_loss_has_no_gradient_outside_the_clip_range",
                "test_clipped_value_loss_has_no_gradient_when_the_clipped_error_is_larger")),
    Assignment(6, "beam search's choice of candidates", "search.py", ("keep_best",),
               ("test_keep_best_ranks_by_cumulative_score", "test_beam_search_with_one_beam_one_candidate_is_a_plain_rollout",
                "test_beam_search_never_executes_a_discarded_candidate")),
)
INSTRUCTORS_ONLY = ("ANSWERS.md", ".ci")  # left out of the student copy
GENERATOR_TESTS = ("test_student_copy", "test_blank_")  # tests of this file: they leave the copy too


def blank(source, name, message):
    """source with the body of function `name` (module level, or "Class.method") replaced by
    `raise NotImplementedError(message)`; its signature, decorators and docstring stay."""
    tree, lines = ast.parse(source), source.splitlines(keepends=True)
    scope, _, fn_name = name.rpartition(".")
    body = next((n.body for n in tree.body if isinstance(n, ast.ClassDef) and n.name == scope), []) if scope \
        else tree.body
    fn = next((n for n in body if isinstance(n, ast.FunctionDef) and n.name == fn_name), None)
    if fn is None:
        raise ValueError(f"no function {name} to blank")
    if fn.body[0].lineno == fn.lineno:
        raise ValueError(f"{name} is written on one line: give it a body of its own lines first")
    has_doc = isinstance(fn.body[0], ast.Expr) and isinstance(getattr(fn.body[0], "value", None), ast.Constant) \
        and isinstance(fn.body[0].value.value, str)
    first = fn.body[1] if has_doc and len(fn.body) > 1 else fn.body[0]
    start = (fn.body[0].end_lineno if has_doc else fn.body[0].lineno - 1)  # 0-based index of the first line to drop
    indent = " " * first.col_offset if not has_doc or len(fn.body) > 1 else " " * fn.body[0].col_offset
    stub = f"{indent}raise NotImplementedError({message!r})\n"
    return "".join(lines[:start]) + stub + "".join(lines[fn.end_lineno:])


def drop_functions(source, prefixes):
    """source without the module-level functions whose names start with one of the prefixes."""
    tree, lines = ast.parse(source), source.splitlines(keepends=True)
    for fn in sorted((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith(prefixes)),
                     key=lambda n: -n.lineno):
        start = min([fn.lineno] + [d.lineno for d in fn.decorator_list]) - 1
        del lines[start:fn.end_lineno]
    return "".join(lines)


def project_files(root=HERE):
    """The repository's files: what git tracks or would (not what it ignores); without git, every file but
    caches and run outputs."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=root, capture_output=True, text=True, check=True).stdout
        return [f for f in out.splitlines() if os.path.exists(os.path.join(root, f))]
    except (OSError, subprocess.CalledProcessError):
        files = []
        for d, dirs, names in os.walk(root):
            dirs[:] = [x for x in dirs if not x.startswith((".", "__pycache__", "out"))]
            files += [os.path.relpath(os.path.join(d, n), root) for n in names]
        return files


STUDENT_README = """# nanoPA, course copy

Six functions of this repository are blank: each raises `NotImplementedError("assignment N: ...")`.
Start with [ASSIGNMENTS.md](ASSIGNMENTS.md): what to write, the equation it is, and the command that grades it.

```bash
pip install -r requirements.txt
python assignments.py --grade 2   # grade one assignment (here the second: AUROC)
python -m pytest -q                # everything: until all six are done, the failures name the assignment they wait for
```

Once assignments 3, 4 and 5 pass, `python train.py --eval=false` trains the agent; the evaluation report at the
end of `python train.py` needs all six. The rest of this file is the project's own README.

"""


def write_student_copy(dest, root=HERE):
    """Write the student copy to dest (which must not exist yet). Returns the list of blanked functions."""
    if os.path.exists(dest):
        raise FileExistsError(f"{dest} exists: choose a new folder for the student copy")
    by_file = {}
    for a in ASSIGNMENTS:
        for fn in a.functions:
            by_file.setdefault(a.file, []).append((fn, f"assignment {a.n}: {a.title} ({a.file}: {fn}), "
                                                       f"see ASSIGNMENTS.md"))
    blanked = []
    for rel in project_files(root):
        if rel.split(os.sep)[0] in INSTRUCTORS_ONLY or rel.split("/")[0] in INSTRUCTORS_ONLY:
            continue
        src, dst = os.path.join(root, rel), os.path.join(dest, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if rel in by_file or rel in ("test_pa.py", "README.md"):
            text = open(src).read()
            for fn, message in by_file.get(rel, []):
                text = blank(text, fn, message)
                blanked.append(f"{rel}: {fn}")
            if rel == "test_pa.py":
                text = drop_functions(text, GENERATOR_TESTS)
            if rel == "README.md":
                text = STUDENT_README + text
            with open(dst, "w") as f:
                f.write(text)
        else:
            shutil.copy2(src, dst)
    return blanked


def grade_command(a):
    """pytest on the tests that grade assignment a, by node id."""
    return [sys.executable, "-m", "pytest", "-q"] + [f"test_pa.py::{t}" for t in a.tests]


def main(argv):
    p = argparse.ArgumentParser(description="Write the course copy of this repository (see ASSIGNMENTS.md).")
    p.add_argument("--student", metavar="DIR", help="write the student copy to this new folder")
    p.add_argument("--grade", type=int, metavar="N", help="run the tests that grade assignment N")
    p.add_argument("--list", action="store_true", help="list the assignments and their grading tests")
    args = p.parse_args(argv)
    if not (args.student or args.list or args.grade):
        p.error("say --student DIR, --grade N or --list")
    if args.list:
        for a in ASSIGNMENTS:
            print(f"{a.n}. {a.title}: {a.file} {', '.join(a.functions)}\n   python -m pytest " + " ".join(grade_command(a)[3:]))
    if args.grade:
        if args.grade not in [a.n for a in ASSIGNMENTS]:
            p.error(f"--grade takes 1 to {len(ASSIGNMENTS)}, not {args.grade}")
        sys.exit(subprocess.run(grade_command(ASSIGNMENTS[args.grade - 1]), cwd=HERE).returncode)
    if args.student:
        try:
            blanked = write_student_copy(args.student)
        except FileExistsError as e:
            p.error(str(e))
        print(f"wrote the student copy to {args.student}; blanked: {'; '.join(blanked)}")


if __name__ == "__main__":
    main(sys.argv[1:])
