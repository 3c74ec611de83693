"""Document library: readers (PDF, DOCX, HTML, Markdown, text), chunking, incremental ingest.

Not implemented yet; the store's ``documents`` and ``chunks`` tables are ready for it.
"""
