"""MLflow "models from code" entry point of the concept pyfunc.

MLflow copies this file into the logged model and runs it at load time instead of unpickling a
Python object (CloudPickle), so loading a registered concept never executes pickled bytes.
"""

import mlflow

from magicapture_pipeline.serving.concept_model import ConceptModel

mlflow.models.set_model(ConceptModel())
