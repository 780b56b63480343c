"""Other systems run beside xyserve in ``bench offline``: llama.cpp (through llama-cpp-python)
and the converter that gives it the same weights."""
