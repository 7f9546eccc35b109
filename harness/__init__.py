"""adapter-harness: an evaluation-first regression harness for fine-tuned LoRA adapters."""

from harness._offline import configure_network

__version__ = "0.1.0"

# Nothing in the harness may wait on a network that is not there: the Hugging Face offline switches
# are on unless the user has set them (or asked for hub access through HARNESS_ALLOW_HUB=1). They
# must be set before huggingface_hub is first imported, which reads them once.
configure_network()

__all__ = ["__version__", "configure_network"]
