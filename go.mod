module github.com/mqtt-sticky/mqtt-sticky

go 1.26.8
