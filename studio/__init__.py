"""`dragnext studio`: a local web app to author drag instructions (Author) and to review a
run's results and send items back (Review). The pages are plain HTML and canvas
(`studio/static`); the logic lives in importable functions, one concern a file."""
