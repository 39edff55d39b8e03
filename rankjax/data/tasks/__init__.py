"""Tasks: a run's problems, prompts, verifiers and answer extraction (`Task`).

Built-ins: arithmetic, generated in-process (the default demo's data, no
downloads), and GSM8K, read from a local JSONL file. A user's JSONL/Parquet
with TRL columns is a `FileTask`; a Python file can return any `Task`
(`from_config` reads `cfg.task` / `cfg.data`). A built-in task is a module
here with `make(cfg) -> Task`; `data.source` names it.
"""

from rankjax.data.tasks.arithmetic import ANSWER_MARKER
from rankjax.data.tasks.arithmetic import ArithmeticTask
from rankjax.data.tasks.arithmetic import canonical_answer
from rankjax.data.tasks.arithmetic import completion_text
from rankjax.data.tasks.arithmetic import encode_answers
from rankjax.data.tasks.arithmetic import extract_answer
from rankjax.data.tasks.arithmetic import generate
from rankjax.data.tasks.arithmetic import make_record
from rankjax.data.tasks.arithmetic import problem_split
from rankjax.data.tasks.arithmetic import verifier_token_ids
from rankjax.data.tasks.arithmetic import VerifierTokenIds
from rankjax.data.tasks.arithmetic import verify
from rankjax.data.tasks.arithmetic import verify_tokens
from rankjax.data.tasks.gsm8k import extract_gsm8k_answer
from rankjax.data.tasks.gsm8k import GSM8KFormatError
from rankjax.data.tasks.gsm8k import read_gsm8k
from rankjax.data.tasks.gsm8k import verify_numeric
from rankjax.data.tasks.arithmetic import Arithmetic
from rankjax.data.tasks._task import corrupt_completion
from rankjax.data.tasks._task import encode_prompt
from rankjax.data.tasks._task import FileTask
from rankjax.data.tasks._task import from_config
from rankjax.data.tasks._task import builtin_names
from rankjax.data.tasks._task import NumericTask
from rankjax.data.tasks._task import source_names
from rankjax.data.tasks.gsm8k import GSM8K
from rankjax.data.tasks._task import load_callable
from rankjax.data.tasks._task import noisy_demonstrations
from rankjax.data.tasks._task import preference_records
from rankjax.data.tasks._task import ranked_records
from rankjax.data.tasks._task import Task
from rankjax.data.tasks._task import wrong_answer
