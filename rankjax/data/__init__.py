"""Training and evaluation data: record formats, sources, pipelines and the
built-in verifiable tasks (`rankjax.data.tasks`).

    source = data.open_source("train-*.jsonl")        # or load_tfds(...)
    pipe = data.build_pipeline(source, tokenizer, global_batch_size=8,
                               max_length=512, packing=True, seed=0)
    it = iter(pipe)            # batches of numpy arrays; it.stats counts
    state = it.get_state()     # ... it.set_state(state) resumes exactly

Formats, batch contents and the loss-mask convention are documented in
`_formats` and `_pipeline`.
"""

from rankjax.data._formats import DataError
from rankjax.data._formats import detect_format
from rankjax.data._formats import extract_prompt
from rankjax.data._formats import FORMAT_NAMES
from rankjax.data._formats import LM
from rankjax.data._formats import LMRecord
from rankjax.data._formats import parse_record
from rankjax.data._formats import PREFERENCE
from rankjax.data._formats import PreferenceRecord
from rankjax.data._formats import PROMPT_COMPLETION
from rankjax.data._formats import PROMPT_ONLY
from rankjax.data._formats import PromptCompletionRecord
from rankjax.data._formats import PromptRecord
from rankjax.data._formats import RANKED
from rankjax.data._formats import RankedRecord
from rankjax.data._formats import tokenize
from rankjax.data._formats import tokenize_lm
from rankjax.data._formats import tokenize_preference
from rankjax.data._formats import tokenize_prompt
from rankjax.data._formats import tokenize_prompt_completion
from rankjax.data._formats import tokenize_ranked
from rankjax.data._formats import tokenize_unpaired
from rankjax.data._formats import UNPAIRED_PREFERENCE
from rankjax.data._formats import UnpairedRecord
from rankjax.data._formats import unpair_preference
from rankjax.data._formats import unpair_preference_rows
from rankjax.data._pipeline import bucket_length
from rankjax.data._pipeline import build_pipeline
from rankjax.data._pipeline import DataIterator
from rankjax.data._pipeline import DataStats
from rankjax.data._pipeline import Pipeline
from rankjax.data._pipeline import PipelineConfig
from rankjax.data._pipeline import process_shard
from rankjax.data._pipeline import sequence_batch
from rankjax.data._pipeline import truncate_example
from rankjax.data._sources import expand_paths
from rankjax.data._sources import JsonlSource
from rankjax.data._sources import load_tfds
from rankjax.data._sources import open_source
from rankjax.data._sources import ParquetSource
from rankjax.data._sources import prepare_tfds
from rankjax.data._sources import RecordSource
from rankjax.data._sources import Row
from rankjax.data._sources import TfdsSource
