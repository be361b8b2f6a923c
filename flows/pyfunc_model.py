"""The registered model's code: an MLflow pyfunc that answers prompts with a crawl2model checkpoint.

The register stage logs this file itself as the model (MLflow's "models from code":
`python_model=` this path), with `model/` as its code path and the checkpoint as an artifact, so
the registry holds code, safetensors weights and JSON, and no pickle. MLflow runs this file when
the model is loaded; it imports mlflow and `model/` only (nothing else of crawl2model ships).

    m = mlflow.pyfunc.load_model("models:/crawl2model@champion")     # in any Python with the requirements
    m.predict(["What is this website about?"], params={"max_new_tokens": 64, "temperature": 0.0})

Input: a list of prompt strings, a string, or a DataFrame with a "prompt" column. Each prompt is
one user turn rendered with the tokenizer's chat template; the reply stops at <|end_of_turn|>.
Params: max_new_tokens (64), temperature (0.0 = greedy), top_k (50), seed (0). A prompt longer
than the context keeps its end.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path

import mlflow.pyfunc
from mlflow.models import set_model

from model.chat_data import chat_prompt_ids
from model.generate import generate
from model.sampling import load_model
from model.tokenizer import END_OF_TURN, load_tokenizer

DEFAULT_PARAMS = {"max_new_tokens": 64, "temperature": 0.0, "top_k": 50, "seed": 0}


def prompts_of(model_input) -> list[str]:
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
            folder = Path(context.artifacts["checkpoint"])
            self.model, self.meta = load_model(folder)
            self.tokenizer = load_tokenizer(folder / "tokenizer")

        def predict(self, context, model_input, params=None):  # no type hints: they would replace the signature with params
            p = {**DEFAULT_PARAMS, **(params or {})}
            limit = self.model.config.max_seq_len
            new_tokens = max(1, min(int(p["max_new_tokens"]), limit - 1))
            ids = [chat_prompt_ids(self.tokenizer, prompt)[-(limit - new_tokens):] for prompt in prompts_of(model_input)]
            out = generate(self.model, ids, new_tokens, temperature=float(p["temperature"]),
                           top_k=int(p["top_k"]) if p["top_k"] else None, eos_id=self.tokenizer.token_to_id(END_OF_TURN),
                           seed=int(p["seed"]))
            return [self.tokenizer.decode(o) for o in out]


set_model(ChatModel())
