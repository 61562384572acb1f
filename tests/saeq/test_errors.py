"""Every error a job can end with is one the API can show (a stored record with an unknown code
would make GET /v1/jobs/{id} fail)."""

import saeq.errors as errors
from saeq_api.schemas import JobError as JobErrorPublic


def test_every_job_error_code_is_listed_and_accepted_by_the_api():
    codes = {c.code for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.JobError)}
    assert codes == set(errors.ERROR_CODES)
    for code in codes:
        assert JobErrorPublic(code=code, message="m").code == code
