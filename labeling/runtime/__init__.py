"""Code that runs in the labeling app's Lambda functions (standard library, boto3 and Powertools only).

Plain functions take their boto3 clients as arguments; `handlers.py` is the thin Lambda layer over them.
The end-to-end test and the seeding command line call the same functions.
"""
