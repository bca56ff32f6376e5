"""gpt-oss-cluster: serving gpt-oss on Ray Serve with vLLM, harmony and effort-aware routing."""
