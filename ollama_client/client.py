"""PLACEHOLDER: the only code that speaks HTTP to Ollama (to be replaced by the real client)."""
import requests


class OllamaClient:
    def __init__(self, base_url: str):
        self.base_url = base_url

    def is_reachable(self) -> bool:
        try:
            return requests.get(self.base_url + "/api/version", timeout=1).ok
        except requests.RequestException:
            return False
