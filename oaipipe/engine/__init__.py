"""The embedded offline engine: a plain library (no plugin machinery) that answers chat and vision
requests deterministically, and learns fine-tuning datasets locally."""
