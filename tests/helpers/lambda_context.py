"""What a Lambda function receives besides its event: the one fake context object of the suite."""

from __future__ import annotations

from dataclasses import dataclass

ACCOUNT, REGION = "123456789012", "eu-west-1"


@dataclass
class LambdaContext:
    """The parts of Lambda's context object the handlers read (Powertools' logger reads the names too)."""

    function_name: str = "test-function"
    seconds_left: float = 900.0  # what get_remaining_time_in_millis() answers
    invoked_function_arn: str = ""  # the function's ARN in ACCOUNT and REGION unless given
    memory_limit_in_mb: int = 1024
    aws_request_id: str = "test-request"
    function_version: str = "$LATEST"

    def __post_init__(self) -> None:
        if not self.invoked_function_arn:
            self.invoked_function_arn = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{self.function_name}"

    def get_remaining_time_in_millis(self) -> int:
        return int(self.seconds_left * 1000)
