"""Built-in verifiable tasks: generators/readers plus verifiers.

Arithmetic is generated in-process (the default demo's data, no downloads);
GSM8K is read from a local JSONL file.
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
