# Thin aliases for deploy/smgeo.sh (which installs what is missing first).
.PHONY: demo test
demo:
	bash deploy/smgeo.sh demo
test:
	bash deploy/smgeo.sh test
