"""A crawl2model checkpoint as an MLflow pyfunc model: prompts in, assistant replies out.

    from model.serving import package_checkpoint, ChatModel
    folder = package_checkpoint(checkpoint, Path("staging/model"))   # weights + meta + tokenizer, self-contained
    mlflow.pyfunc.log_model(name="model", python_model=ChatModel(), artifacts={"checkpoint": str(folder)},
                            code_paths=[...model/, tasks/], pip_requirements=[...])
    m = mlflow.pyfunc.load_model("models:/crawl2model@champion")     # in any Python with the requirements
    m.predict(["What is this website about?"], params={"max_new_tokens": 64, "temperature": 0.0})

Input: a list of prompt strings, a string, or a DataFrame with a "prompt" column. Each prompt is
one user turn rendered with the tokenizer's chat template; the reply stops at <|end_of_turn|>.
Params: max_new_tokens (64), temperature (0.0 = greedy), top_k (50), seed (0). A prompt longer
than the context keeps its end.
"""

from __future__ import annotations

import json
import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path

import mlflow.pyfunc

SERVED_FILES = ("model.safetensors", "meta.json")
DEFAULT_PARAMS = {"max_new_tokens": 64, "temperature": 0.0, "top_k": 50, "seed": 0}


def package_checkpoint(checkpoint: Path, dest: Path) -> Path:
    """A self-contained copy of a checkpoint for serving: weights, meta.json (tokenizer made relative)
    and the tokenizer folder; no optimizer state."""
    from model.hf import tokenizer_folder

    checkpoint, dest = Path(checkpoint), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(checkpoint / "model.safetensors", dest / "model.safetensors")
    shutil.copytree(tokenizer_folder(checkpoint), dest / "tokenizer", dirs_exist_ok=True)
    meta = json.loads((checkpoint / "meta.json").read_text())
    meta["tokenizer"] = "tokenizer"  # relative to the folder, wherever MLflow puts it
    meta["packaged_from"] = str(checkpoint.resolve())
    (dest / "meta.json").write_text(json.dumps(meta, indent=1))
    return dest


def _prompts(model_input) -> list[str]:
    if isinstance(model_input, str):
        return [model_input]
    if hasattr(model_input, "columns"):  # a pandas DataFrame
        column = "prompt" if "prompt" in model_input.columns else model_input.columns[0]
        return [str(p) for p in model_input[column].tolist()]
    return [str(p) for p in model_input]


@contextmanager
def silenced_warnings():
    """No warning is shown inside. MLflow changes the warning filters while it works, so
    warnings.catch_warnings() would not hold; replacing showwarning does."""
    show = warnings.showwarning
    warnings.showwarning = lambda *args, **kwargs: None
    try:
        yield
    finally:
        warnings.showwarning = show


# MLflow warns when the class is created that predict has no type hints (on purpose: hints would
# replace the signature's params); the warning tells a user nothing.
with silenced_warnings():

    class ChatModel(mlflow.pyfunc.PythonModel):
        def load_context(self, context) -> None:
            from tokenizers import Tokenizer

            from model.sampling import load_model

            folder = Path(context.artifacts["checkpoint"])
            self.model, self.meta = load_model(folder)
            self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer" / "tokenizer.json"))

        def predict(self, context, model_input, params=None):  # no type hints: they would replace the signature with params
            from model.chat_data import chat_prompt_ids
            from model.generate import generate
            from tasks.bpe import END_OF_TURN

            p = {**DEFAULT_PARAMS, **(params or {})}
            limit = self.model.config.max_seq_len
            new_tokens = max(1, min(int(p["max_new_tokens"]), limit - 1))
            ids = [chat_prompt_ids(self.tokenizer, prompt)[-(limit - new_tokens):] for prompt in _prompts(model_input)]
            out = generate(self.model, ids, new_tokens, temperature=float(p["temperature"]),
                           top_k=int(p["top_k"]) if p["top_k"] else None, eos_id=self.tokenizer.token_to_id(END_OF_TURN),
                           seed=int(p["seed"]))
            return [self.tokenizer.decode(o) for o in out]
