"""Print the OpenAPI document (default settings) as JSON: `python -m openapi_doc > openapi.json`."""
import json
import sys
import warnings

warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")  # imported on the way; not used here

from health import VERSION  # noqa: E402
from openapi_doc import build_document  # noqa: E402

json.dump(build_document(VERSION), sys.stdout, indent=2, ensure_ascii=False)
sys.stdout.write("\n")
