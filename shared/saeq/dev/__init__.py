"""Developer tools: the local stack (`saeq up`) and the offline demo."""
